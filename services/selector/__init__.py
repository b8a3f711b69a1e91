"""The selector service: parser outputs + rules -> selected-images.json and export requests.

Consumes ``job.parsed.#``, publishes ``job.selected.<pipeline>`` and
``export.requested.<destination>`` (see docs/pipelines.md).
"""
