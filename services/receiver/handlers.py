"""pynetdicom event handlers: plain functions of ``(event, context)``.

==================  =================================================================
event               handler
==================  =================================================================
EVT_CONN_OPEN       :func:`handle_connection_open`: TCP_NODELAY on the accepted socket;
                    malformed Affected SOP Instance UIDs answered 0x0117
                    (:mod:`services.receiver.dimse`)
EVT_REQUESTED       :func:`handle_requested`: A-ASSOCIATE-RJ for an unknown called AE
                    title or source, before negotiation
EVT_ESTABLISHED     :func:`handle_established`: the association gets its ID
EVT_C_ECHO          :func:`handle_echo`: Success
EVT_C_STORE         :func:`handle_store`: store as received, then answer (statuses below)
EVT_RELEASED        :func:`handle_released`: the association's instances go to a job
EVT_ABORTED         :func:`handle_aborted`: the association's instances are quarantined
==================  =================================================================

C-STORE statuses (:mod:`services.receiver.statuses`):

* ``SUCCESS`` (0x0000): the instance is fsynced in the local spool
  (:mod:`services.receiver.spool`), which uploads it to the object store behind, or its
  SOP Class is ignored for this AE title, or the job already has this copy or keeps its
  first copy (:mod:`services.receiver.duplicates`);
* ``INVALID_SOP_INSTANCE`` (0x0117): the Affected SOP Instance UID is not a valid UID;
* ``DATA_SET_DOES_NOT_MATCH_SOP_CLASS`` (0xA900): an identifying UID of the data set is
  missing, not a UID, or contradicts the request;
* ``CANNOT_UNDERSTAND`` (0xC000): the data set is not well formed
  (:mod:`services.receiver.encoding`);
* ``DUPLICATE_SOP_INSTANCE`` (0x0111): different content for an instance the job has, and
  the policy is ``reject``;
* ``OUT_OF_RESOURCES`` (0xA700): the spool takes nothing now: the last upload to the
  object store failed, files wait and the store has taken none for longer than
  ``SERIESFLOW_STORE_TIMEOUT_SECONDS``, the spool is full, or the local disk failed;
* ``PROCESSING_FAILURE`` (0x0110): anything unexpected. Never success unless stored.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydicom.dataset import FileMetaDataset

from services.receiver import dimse, statuses, wakeup
from services.receiver.association import (
    AssociationPolicy,
    OpenAssociation,
    OpenAssociations,
    Rejection,
    new_association_id,
)
from services.receiver.duplicates import DuplicatePolicy, Seen, digest, policy_of
from services.receiver.grouping import group_for
from services.receiver.instance import (
    InstanceError,
    check_sop_instance_uid,
    data_set_of,
    describe,
    part10,
)
from services.receiver.job import DuplicateConflict, Ending, Group
from services.receiver.release import JobService
from services.receiver.spool import Spool
from shared import keys
from shared.config import AETitleConfig
from shared.logs import get_logger
from shared.metrics import Metrics

log = get_logger("receiver.scp")


@dataclass
class ReceiverContext:
    """What the handlers work with."""

    ae_titles: dict[str, AETitleConfig]
    policy: AssociationPolicy
    jobs: JobService
    spool: Spool
    associations: OpenAssociations = field(default_factory=OpenAssociations)
    stopping: bool = False
    """Set when the receiver ends the open associations itself (shutdown)."""
    metrics: Metrics = field(default_factory=lambda: Metrics("receiver"))


def _titles(event: Any) -> tuple[str, str]:
    primitive = event.assoc.requestor.primitive
    return str(primitive.called_ae_title).strip(), str(primitive.calling_ae_title).strip()


def handle_connection_open(event: Any, context: ReceiverContext) -> None:
    """Every accepted DICOM socket sends small PDUs (responses) without Nagle's delay,
    answers a malformed Affected SOP Instance UID with 0x0117 instead of aborting, and has
    an association thread that wakes when something is queued for it instead of every
    millisecond (:func:`services.receiver.wakeup.wake_on_messages`)."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:
        log.warning("TCP_NODELAY not set", extra={"error": type(exc).__name__})
    assoc = event.assoc

    def refused(reason: str) -> None:
        association = context.associations.get(assoc)
        log.warning(
            "instance refused",
            extra={
                "association": association.association_id if association else None,
                "peer": str(assoc.requestor.address),
                "reason": reason,
                "status": statuses.INVALID_SOP_INSTANCE,
            },
        )

    dimse.guard(assoc, refused)
    wakeup.wake_on_messages(assoc)


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
    context.metrics.association_refused(rejection.reason)
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
    context.metrics.associations_accepted.inc()
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
    """Store the instance as received; SUCCESS only once the spool has it on disk."""
    association = context.associations.get(event.assoc)
    if association is None:
        log.error("C-STORE on an association that was not established")
        return context.metrics.cstore_answered(statuses.PROCESSING_FAILURE)
    try:
        return context.metrics.cstore_answered(_store(event, context, association))
    except Exception as exc:
        log.exception(
            "C-STORE failed unexpectedly",
            extra={"association": association.association_id, "error": type(exc).__name__},
        )
        return context.metrics.cstore_answered(statuses.PROCESSING_FAILURE)


def _store(event: Any, context: ReceiverContext, association: OpenAssociation) -> int:
    request = event.request
    return store_instance(
        context,
        association,
        str(request.AffectedSOPClassUID or ""),
        str(request.AffectedSOPInstanceUID or ""),
        event.file_meta,
        lambda: event.encoded_dataset(include_meta=False),
        str(event.context.transfer_syntax),
    )


def store_instance(
    context: ReceiverContext,
    association: OpenAssociation,
    affected_sop_class_uid: str,
    affected_sop_instance_uid: str,
    file_meta: FileMetaDataset,
    encoded_dataset: Callable[[], bytes],
    transfer_syntax_uid: str,
) -> int:
    """Check and store one instance of ``association`` (C-STORE, or a STOW-RS request:
    :mod:`services.receiver.stow`); the C-STORE status that answers it."""
    sop_class_uid = affected_sop_class_uid.strip("\0 ")
    extra: dict[str, object] = {"association": association.association_id}
    try:
        sop_instance_uid = check_sop_instance_uid(affected_sop_instance_uid)
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
    key = keys.incoming_instance(association.association_id, sop_instance_uid)
    data_set = encoded_dataset()
    data = part10(file_meta, data_set, association.calling_ae_title, association.called_ae_title)
    try:
        ref = describe(data, key, sop_class_uid, sop_instance_uid, transfer_syntax_uid)
    except InstanceError as exc:
        log.warning("instance refused", extra={**extra, "reason": exc.reason, "status": exc.status})
        return exc.status
    group = group_for(
        config, association.association_id, association.calling_ae_title, ref.study_instance_uid
    )
    copy = ""
    replace = False
    seen = context.jobs.index.seen(group, sop_instance_uid)
    if seen is not None:
        copy = digest(data_set)
        seen = _with_digest(context, group, sop_instance_uid, seen)
    if seen is not None and seen.digest == copy:
        if seen.association_id == association.association_id:
            log.info("instance received again, identical: already stored", extra=extra)
            return statuses.SUCCESS
    elif seen is not None:
        policy = policy_of(config)
        _audit(association, sop_instance_uid, policy, seen, copy)
        if policy is DuplicatePolicy.KEEP_FIRST:
            return statuses.SUCCESS
        if policy is DuplicatePolicy.REJECT:
            return statuses.DUPLICATE_SOP_INSTANCE
        replace = True
    try:
        context.spool.store(
            key, association.association_id, data, ask=not association.store_answered
        )
        association.store_answered = True
    except Exception as exc:
        log.error(
            "instance not stored: answering Refused (out of resources)",
            extra={**extra, "reason": getattr(exc, "reason", type(exc).__name__)},
        )
        return statuses.OUT_OF_RESOURCES
    with association.lock:
        association.instances[sop_instance_uid] = ref
        association.stored_at[sop_instance_uid] = time.time()
    context.jobs.index.stored(
        group, sop_instance_uid, Seen(association.association_id, copy, key), replace
    )
    context.jobs.instance_stored(association, group)
    context.metrics.instance_received(len(data))
    return statuses.SUCCESS


def _with_digest(context: ReceiverContext, group: Group, sop_instance_uid: str, seen: Seen) -> Seen:
    """``seen`` with its digest, computed from its bytes (spool, else store) if not yet,
    and then kept in the index."""
    if seen.digest or not seen.key:
        return seen
    data = context.spool.read(seen.key)
    if data is None:  # uploaded meanwhile
        data = context.jobs.job_store.instance_bytes(seen.key)
    seen = dataclasses.replace(seen, digest=digest(data_set_of(data)))
    context.jobs.index.remember_digest(group, sop_instance_uid, seen)
    return seen


_OUTCOMES: dict[DuplicatePolicy, Literal["kept-first", "overwritten", "rejected"]] = {
    DuplicatePolicy.KEEP_FIRST: "kept-first",
    DuplicatePolicy.OVERWRITE: "overwritten",
    DuplicatePolicy.REJECT: "rejected",
}


def _audit(
    association: OpenAssociation,
    sop_instance_uid: str,
    policy: DuplicatePolicy,
    seen: Seen,
    copy: str,
) -> None:
    """Log and record a SOP Instance UID received again with different content."""
    conflict = DuplicateConflict(
        sop_instance_uid=sop_instance_uid,
        policy=policy.value,
        outcome=_OUTCOMES[policy],
        first_association=seen.association_id,
        first_digest=seen.digest,
        digest=copy,
        at=datetime.now(UTC),
    )
    with association.lock:
        association.duplicates.append(conflict)
    log.warning(
        "SOP Instance UID received again with different content",
        extra={
            "association": association.association_id,
            "sop_instance_uid": sop_instance_uid,
            "policy": conflict.policy,
            "outcome": conflict.outcome,
            "first_association": seen.association_id,
            "first_digest": seen.digest,
            "digest": copy,
        },
    )


def handle_released(event: Any, context: ReceiverContext) -> None:
    association = context.associations.close(event.assoc)
    if association is not None:
        context.jobs.association_released(association)


def handle_aborted(event: Any, context: ReceiverContext) -> None:
    association = context.associations.close(event.assoc)
    if association is not None:
        context.jobs.association_aborted(association, _ending(context))


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
            context.jobs.association_aborted(association, _ending(context))


def _ending(context: ReceiverContext) -> Ending:
    """How an association that ended without release ended: we stopped it, or the peer."""
    return "interrupted" if context.stopping else "aborted"
