"""The exporter service: C-STORE SCU to the configured DICOM destinations.

Consumes ``export.requested.#`` and publishes ``export.completed`` (see docs/exporter.md).
"""
