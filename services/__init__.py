"""The services of service mode (see services/README.md)."""
