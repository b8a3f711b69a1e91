"""The parser service: a job's instances -> dicom-metadata.json, volumes, series-images.json.

Consumes ``job.received.#``, publishes ``job.parsed.<pipeline>`` (see docs/pipelines.md).
"""
