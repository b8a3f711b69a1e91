"""The receiver service: a DICOM SCP (C-ECHO, C-STORE) whose AE titles run pipelines.

Each instance is stored as received before C-STORE success is answered; a released
association (or, with a ``timeout``, a group of them) becomes a job: its manifest is
written, then ``job.received.<pipeline>`` is published. See docs/receiver.md.
"""
