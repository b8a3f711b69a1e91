"""pynetdicom event handlers: plain functions of ``(event, context)``.

==================  =================================================================
event               handler
==================  =================================================================
EVT_CONN_OPEN       :func:`handle_connection_open`: TCP_NODELAY on the accepted socket
EVT_REQUESTED       :func:`handle_requested`: A-ASSOCIATE-RJ for an unknown called AE
                    title or source, before negotiation
EVT_ESTABLISHED     :func:`handle_established`: the association gets its ID
EVT_C_ECHO          :func:`handle_echo`: Success
EVT_C_STORE         :func:`handle_store`: store as received, then answer (statuses below)
EVT_RELEASED        :func:`handle_released`: the association's instances go to a job
EVT_ABORTED         :func:`handle_aborted`: the association's instances are deleted
==================  =================================================================

C-STORE statuses (:mod:`services.receiver.statuses`):

* ``SUCCESS`` (0x0000): the instance is in the object store (``put`` returned), or its
  SOP Class is ignored for this AE title, or it repeats an instance of this association
  and ``overwrite-same-instance`` is false (the first copy is kept);
* ``INVALID_SOP_INSTANCE`` (0x0117): the Affected SOP Instance UID is not a valid UID;
* ``DATA_SET_DOES_NOT_MATCH_SOP_CLASS`` (0xA900): the data set's SOP Class or Instance UID
  contradicts the request;
* ``CANNOT_UNDERSTAND`` (0xC000): the data set cannot be read;
* ``OUT_OF_RESOURCES`` (0xA700): the object store did not take it (unreachable, refused);
* ``PROCESSING_FAILURE`` (0x0110): anything unexpected. Never success unless stored.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from services.receiver import statuses
from services.receiver.association import (
    AssociationPolicy,
    OpenAssociation,
    OpenAssociations,
    Rejection,
    new_association_id,
)
from services.receiver.instance import InstanceError, check_sop_instance_uid, describe, part10
from services.receiver.release import JobService
from shared import keys
from shared.config import AETitleConfig
from shared.logs import get_logger
from shared.store import ObjectStore

log = get_logger("receiver.scp")


@dataclass
class ReceiverContext:
    """What the handlers work with."""

    ae_titles: dict[str, AETitleConfig]
    policy: AssociationPolicy
    store: ObjectStore
    jobs: JobService
    associations: OpenAssociations = field(default_factory=OpenAssociations)


def _titles(event: Any) -> tuple[str, str]:
    primitive = event.assoc.requestor.primitive
    return str(primitive.called_ae_title).strip(), str(primitive.calling_ae_title).strip()


def handle_connection_open(event: Any, context: ReceiverContext) -> None:
    """Every accepted DICOM socket sends small PDUs (responses) without Nagle's delay."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:
        log.warning("TCP_NODELAY not set", extra={"error": type(exc).__name__})


def handle_requested(event: Any, context: ReceiverContext) -> None:
    """Reject an association request for an unknown called AE title or source."""
    called, calling = _titles(event)
    peer = str(event.assoc.requestor.address)
    try:
        rejection = context.policy.check(called, calling, peer)
    except Exception as exc:  # never let a request through because a check failed
        log.exception("source check failed", extra={"error": type(exc).__name__})
        rejection = Rejection.CALLING_AE_TITLE
    if rejection is None:
        return
    log.warning(
        "association rejected",
        extra={
            "reason": rejection.reason,
            "called_ae_title": called,
            "calling_ae_title": calling,
            "peer": peer,
        },
    )
    event.assoc.acse.send_reject(rejection.result, rejection.source, rejection.diagnostic)
    # As pynetdicom does for its own rejections: wait until the peer closed the connection
    # (or the ARTIM timer expired), so the A-ASSOCIATE-RJ is delivered before the socket
    # is shut down.
    event.assoc.kill()


def handle_established(event: Any, context: ReceiverContext) -> None:
    called, calling = _titles(event)
    association = OpenAssociation(
        association_id=new_association_id(),
        called_ae_title=called,
        calling_ae_title=calling,
        calling_host=str(event.assoc.requestor.address),
    )
    context.jobs.remember(association.association_id)
    context.associations.open(event.assoc, association)
    log.info(
        "association accepted",
        extra={
            "association": association.association_id,
            "called_ae_title": called,
            "calling_ae_title": calling,
        },
    )


def handle_echo(event: Any, context: ReceiverContext) -> int:
    return statuses.SUCCESS


def handle_store(event: Any, context: ReceiverContext) -> int:
    """Store the instance as received; SUCCESS only once the store has it."""
    association = context.associations.get(event.assoc)
    if association is None:
        log.error("C-STORE on an association that was not established")
        return statuses.PROCESSING_FAILURE
    try:
        return _store(event, context, association)
    except Exception as exc:
        log.exception(
            "C-STORE failed unexpectedly",
            extra={"association": association.association_id, "error": type(exc).__name__},
        )
        return statuses.PROCESSING_FAILURE


def _store(event: Any, context: ReceiverContext, association: OpenAssociation) -> int:
    request = event.request
    sop_class_uid = str(request.AffectedSOPClassUID or "").strip("\0 ")
    extra: dict[str, object] = {"association": association.association_id}
    try:
        sop_instance_uid = check_sop_instance_uid(str(request.AffectedSOPInstanceUID or ""))
    except InstanceError as exc:
        log.warning("instance refused", extra={**extra, "reason": exc.reason})
        return exc.status
    extra["sop_instance_uid"] = sop_instance_uid
    config = context.ae_titles.get(association.called_ae_title)
    if config is None or context.jobs.pipelines.get(association.called_ae_title) is None:
        log.warning("instance refused: the called AE title has no pipeline", extra=extra)
        return statuses.NOT_AUTHORIZED
    if sop_class_uid in config.ignored_sop_classes:
        log.info(
            "instance of an ignored SOP class: not stored",
            extra={**extra, "sop_class_uid": sop_class_uid},
        )
        return statuses.SUCCESS
    with association.lock:
        repeated = sop_instance_uid in association.instances
    if repeated and not config.overwrite_same_instance:
        log.info("instance received again: first copy kept", extra=extra)
        return statuses.SUCCESS
    key = keys.incoming_instance(association.association_id, sop_instance_uid)
    data = part10(
        event.file_meta, event.encoded_dataset(include_meta=False), association.calling_ae_title
    )
    try:
        ref = describe(
            data, key, sop_class_uid, sop_instance_uid, str(event.context.transfer_syntax)
        )
    except InstanceError as exc:
        log.warning("instance refused", extra={**extra, "reason": exc.reason})
        return exc.status
    try:
        context.store.put_bytes(key, data, "application/dicom")
    except Exception as exc:
        log.error(
            "instance not stored: answering Refused (out of resources)",
            extra={**extra, "reason": getattr(exc, "reason", type(exc).__name__)},
        )
        return statuses.OUT_OF_RESOURCES
    with association.lock:
        association.instances[sop_instance_uid] = ref
    context.jobs.instance_stored(association)
    return statuses.SUCCESS


def handle_released(event: Any, context: ReceiverContext) -> None:
    association = context.associations.close(event.assoc)
    if association is not None:
        context.jobs.association_released(association)


def handle_aborted(event: Any, context: ReceiverContext) -> None:
    association = context.associations.close(event.assoc)
    if association is not None:
        context.jobs.association_aborted(association)


def end_quietly_ended(context: ReceiverContext) -> None:
    """Associations whose thread ended with neither EVT_RELEASED nor EVT_ABORTED seen
    (a dropped connection, a timeout): released if pynetdicom says so, else aborted."""
    for assoc in context.associations.ended():
        association = context.associations.close(assoc)
        if association is None:
            continue
        if getattr(assoc, "is_released", False):
            context.jobs.association_released(association)
        else:
            context.jobs.association_aborted(association)
