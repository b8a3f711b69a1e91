"""The object store's key layout. Keys are built here, and only from validated identifiers.

    incoming/<association_id>/<SOPInstanceUID>.dcm    instances as received
    incoming/<association_id>/association.json       the receiver's record of a release
    quarantine/<association_id>.json                  record of an association that ended
                                                      without release (instances kept)
    jobs/<job_id>/manifest.json                       the job: pipeline, AE titles, instances
    jobs/<job_id>/output/<file>                       parser and selector outputs
    jobs/<job_id>/events/<stage>.json                 every event the job produced (replay)
    exports/<export_id>/state.json                    per-destination progress of an export
    config/<kind>/<name>.json                         configuration the REST API manages

``job_id``, ``association_id`` and ``export_id`` are 32 lowercase hexadecimal digits.
"""

from __future__ import annotations

import re

from shared.errors import InvalidIdentifierError
from shared.identifiers import validate_name, validate_uid

INCOMING = "incoming/"
QUARANTINE = "quarantine/"
_HEX_ID = re.compile(r"^[0-9a-f]{32}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def validate_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not _HEX_ID.match(value):
        raise InvalidIdentifierError(f"{what} {value!r} is not 32 lowercase hexadecimal digits")
    return value


def validate_file_name(value: str) -> str:
    if not isinstance(value, str) or ".." in value or not _FILE.match(value):
        raise InvalidIdentifierError(f"file name {value!r} is not safe in an object key")
    return value


def incoming_prefix(association_id: str) -> str:
    return f"incoming/{validate_id(association_id, 'association id')}/"


def incoming_instance(association_id: str, sop_instance_uid: str) -> str:
    return incoming_prefix(association_id) + f"{validate_uid(sop_instance_uid)}.dcm"


def association_record(association_id: str) -> str:
    return incoming_prefix(association_id) + "association.json"


def quarantine_record(association_id: str) -> str:
    """An association that ended without A-RELEASE: its record, while its instances stay
    under ``incoming/<association_id>/`` (see docs/receiver.md, quarantine)."""
    return f"{QUARANTINE}{validate_id(association_id, 'association id')}.json"


def job_prefix(job_id: str) -> str:
    return f"jobs/{validate_id(job_id, 'job id')}/"


def manifest(job_id: str) -> str:
    return job_prefix(job_id) + "manifest.json"


def output_prefix(job_id: str) -> str:
    return job_prefix(job_id) + "output/"


def output(job_id: str, file_name: str) -> str:
    return output_prefix(job_id) + validate_file_name(file_name)


def event(job_id: str, stage: str) -> str:
    return job_prefix(job_id) + f"events/{validate_file_name(stage)}.json"


def export_state(export_id: str) -> str:
    return f"exports/{validate_id(export_id, 'export id')}/state.json"


def config(kind: str, name: str) -> str:
    return f"config/{validate_file_name(kind)}/{validate_name(name)}.json"
