"""The config API: REST configuration of AE titles, sources, destinations and pipelines.

Clara DICOM Adapter-compatible endpoints under ``/api/config/`` and seriesflow's own API
under ``/api/v1/`` (see docs/config-api.md). Configuration lives in the object store at
``config/<kind>/<name>.json`` with optimistic concurrency; each change publishes
``config.changed`` and leaves an audit record.
"""
