"""The receiver's entry points: :class:`Receiver` (start / stop) and :func:`run`.

``seriesflow receiver`` calls :func:`run`, which blocks until ``stop`` is set (SIGTERM).
Tests and embedders use :class:`Receiver` directly: ``start()`` returns once the SCP is
listening.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any, cast

from services.receiver import drain, handlers, scp
from services.receiver.association import AssociationPolicy
from services.receiver.cleanup import SweepResult, sweep
from services.receiver.handlers import ReceiverContext
from services.receiver.quarantine import check_quarantine
from services.receiver.release import JobService
from services.receiver.settings import receiver_settings
from services.receiver.spool import Spool, default_spool_dir
from services.receiver.stow import StowServer
from shared.config import SeriesflowConfig, load_config
from shared.configstore import LiveConfig, LiveView
from shared.errors import InvalidIdentifierError, InvalidInputError
from shared.identifiers import validate_name
from shared.jobstore import JobStore
from shared.logs import get_logger
from shared.metrics import Metrics
from shared.pipelines import PipelineRegistry
from shared.settings import ServiceSettings
from shared.store import ObjectStore

log = get_logger("receiver")


def pipelines_by_ae_title(config: SeriesflowConfig, strict: bool = True) -> dict[str, str]:
    """Each of our AE titles and its pipeline.

    ``strict`` (the configuration file at start): a title without a pipeline is an error.
    Otherwise (configuration changed through the API) such a title is left out: it answers
    C-ECHO, and C-STORE to it is refused (Not authorized) until it gets a pipeline.
    """
    pipelines: dict[str, str] = {}
    for entry in config.dicom.scp.ae_titles:
        pipeline = config.pipeline_for(entry.ae_title)
        if pipeline is None and not strict:
            log.warning(
                "AE title has no pipeline: C-STORE to it is refused",
                extra={"ae_title": entry.ae_title},
            )
            continue
        if pipeline is None:
            raise InvalidInputError(
                f"dicom > scp > ae-titles: AE title {entry.ae_title!r} has no pipeline; give "
                f"it 'pipeline: <name>' or add a pipeline-mappings entry with "
                f"'clara-ae-title: {entry.ae_title}'"
            )
        try:
            pipelines[entry.ae_title] = validate_name(pipeline, "pipeline")
        except InvalidIdentifierError as exc:
            if not strict:
                log.warning(
                    "AE title's pipeline name is not valid: C-STORE to it is refused",
                    extra={"ae_title": entry.ae_title},
                )
                continue
            raise InvalidInputError(
                f"dicom > scp > ae-titles: AE title {entry.ae_title!r}: {exc.reason}"
            ) from exc
    return pipelines


class Receiver:
    """The receiver service in this process: DICOM SCP, job release, sweeps."""

    def __init__(self, settings: ServiceSettings, config: SeriesflowConfig | None = None) -> None:
        self.settings = receiver_settings(settings)
        self.config = config if config is not None else load_config(self.settings.config)
        self.scp_config = self.config.dicom.scp
        ae_titles = {a.ae_title: a for a in self.scp_config.ae_titles}
        self.metrics = Metrics("receiver")
        store = ObjectStore(self.settings, metrics=self.metrics)
        self.job_store = JobStore(store)
        self.live = LiveConfig(
            store,
            self.config,
            self.settings.live_config_seconds,
            file_pipelines=PipelineRegistry.load(self.settings.pipelines),
        )
        self._pipelines: PipelineRegistry | None = None
        self.spool = Spool(
            self.settings.spool_dir or default_spool_dir(),
            self.settings.s3_bucket,
            self.job_store,
            timeout=self.settings.store_timeout_seconds,
            max_bytes=self.settings.spool_max_bytes,
            workers=self.settings.spool_upload_threads,
            backoff=self.settings.retry_backoff_seconds,
            backoff_max=self.settings.retry_backoff_max_seconds,
        )
        self.jobs = JobService(
            self.settings,
            self.job_store,
            self.spool,
            ae_titles,
            pipelines_by_ae_title(self.config),
            self.metrics,
        )
        self.context = ReceiverContext(
            ae_titles=ae_titles,
            policy=AssociationPolicy.from_config(self.scp_config),
            jobs=self.jobs,
            spool=self.spool,
            metrics=self.metrics,
        )
        self.metrics.track_open_associations(lambda: len(self.context.associations))
        self._stop = threading.Event()
        self._ae: Any = None
        self._server: Any = None
        self._housekeeper: threading.Thread | None = None
        self._bucket_ready = False
        self._stow = StowServer(self.settings, self.context) if self.settings.stow_port else None

    @property
    def port(self) -> int:
        """The port the SCP listens on."""
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return int(self._server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The DICOM TLS port, when ``dicom > scp > tls`` is configured."""
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return cast(int | None, self._server.tls_port)

    @property
    def ae(self) -> Any:
        """The pynetdicom AE (its ``active_associations``, for inspection)."""
        return self._ae

    def start(self) -> None:
        """Connect to the store, start the job threads and listen; returns at once."""
        self._stop.clear()
        try:
            self.spool.open()
        except OSError as exc:
            raise InvalidInputError(
                f"SERIESFLOW_SPOOL_DIR: cannot use {self.spool.base}: {exc.strerror or exc}"
            ) from exc
        if not self._ensure_bucket(self.settings.store_attempts_at_start):
            self.spool.mark_failing("the object store was unreachable at start")
        self.spool.recover()  # what a killed receiver left: uploaded before the first sweep
        self.spool.start()
        view = self.live.view()
        self._check_pipelines(view)
        self.apply_config(view.config, view.pipelines)
        self.jobs.start()
        self._ae = scp.build_ae(self.scp_config, self.settings)
        try:
            self._server = scp.start_server(self._ae, self.scp_config, self.context)
        except Exception:
            self.jobs.stop()
            self.spool.close()
            raise
        self._housekeeper = threading.Thread(
            target=self._housekeep, name="receiver-housekeeping", daemon=True
        )
        self._housekeeper.start()
        if self._stow is not None:
            self._stow.start()
        self.metrics.serve_as_configured(self.settings)
        log.info(
            "receiver listening",
            extra={
                "host": self.scp_config.host,
                "port": self.port,
                "tls_port": self.tls_port,
                "ae_titles": sorted(self.context.ae_titles),
            },
        )

    def stop(self) -> None:
        """Drain (:mod:`services.receiver.drain`): stop accepting, let open associations
        finish within ``SERIESFLOW_DRAIN_SECONDS``, end the rest (their instances are
        quarantined), finish queued job work, stop."""
        if self._server is not None:
            self._server.stop_accepting()
        if self._stow is not None:
            self._stow.stop()
        drain.wait_for_associations(
            lambda: len(self.context.associations), self.settings.drain_seconds
        )
        self._stop.set()
        self.context.stopping = True
        if self._ae is not None:
            self._ae.shutdown()
        handlers.end_quietly_ended(self.context)
        # Uploads and the records behind them go on while the store takes them; what is
        # left is uploaded by the next start.
        if not self.spool.drain(max(self.settings.store_timeout_seconds, 5.0)):
            log.warning("spool not empty at stop", extra={"files": self.spool.state().files})
        if self._housekeeper is not None:
            self._housekeeper.join(10)
        self.jobs.stop()
        self.spool.close()
        self.metrics.close()
        log.info("receiver stopped")

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def check_quarantine(self) -> tuple[int, int]:
        """Operator releases and expiry of ``quarantine/`` now: (jobs released, deleted)."""
        return check_quarantine(self.job_store, self.jobs, self.settings.quarantine_seconds)

    def sweep(self) -> SweepResult:
        """One sweep of ``incoming/`` now (see :mod:`services.receiver.cleanup`)."""
        return sweep(
            self.job_store,
            self.jobs,
            self.scp_config.incoming_ttl,
            self.settings.recovery_grace_seconds,
        )

    def _ensure_bucket(self, attempts: int) -> bool:
        delay = self.settings.retry_backoff_seconds or 0.5
        for attempt in range(1, attempts + 1):
            try:
                self.job_store.ensure_bucket()
                self._bucket_ready = True
                return True
            except Exception as exc:
                log.warning(
                    "object store unreachable; C-STORE is refused until it is back",
                    extra={"reason": getattr(exc, "reason", type(exc).__name__)},
                )
                if attempt < attempts and self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.settings.retry_backoff_max_seconds or 30.0)
        return False

    def _checks_pipelines(self, registry: PipelineRegistry) -> bool:
        """Whether the receiver knows the pipelines: a pipelines folder, or stored ones."""
        return self.settings.pipelines is not None or bool(registry.all())

    def _check_pipelines(self, view: LiveView) -> None:
        """Refuse to start when an AE title names a pipeline that does not exist."""
        if not self._checks_pipelines(view.pipelines):
            log.warning("no pipelines folder and no stored pipeline: AE titles not checked")
            return
        for entry in view.config.dicom.scp.ae_titles:
            target = view.config.pipeline_for(entry.ae_title)
            if target is not None and view.pipelines.get(target) is None:
                raise InvalidInputError(
                    f"AE title {entry.ae_title!r} names pipeline {target!r}, which is not "
                    "defined (neither in the pipelines folder nor stored through the API)"
                )

    def apply_config(
        self, config: SeriesflowConfig, registry: PipelineRegistry | None = None
    ) -> None:
        """Use ``config``'s AE titles and sources from now on (live reconfiguration).

        New associations see the new AE titles and sources at once; open associations
        keep going. The listening address, port and limits stay as started. An AE title
        whose pipeline ``registry`` does not define is left out of the pipeline map, so
        C-STORE to it is refused (never answered success for a job that cannot run).
        """
        scp_config = config.dicom.scp
        ae_titles = {a.ae_title: a for a in scp_config.ae_titles}
        pipelines = pipelines_by_ae_title(config, strict=False)
        if registry is not None:
            self._pipelines = registry
            if self._checks_pipelines(registry):
                for ae_title, target in list(pipelines.items()):
                    if registry.get(target) is None:
                        log.warning(
                            "AE title's pipeline is not defined: C-STORE to it is refused",
                            extra={"ae_title": ae_title, "pipeline": target},
                        )
                        del pipelines[ae_title]
        policy = AssociationPolicy.from_config(scp_config)
        # Each assignment replaces a whole object, so a reader sees the old or the new one.
        self.jobs.ae_titles = ae_titles
        self.jobs.pipelines = pipelines
        self.context.ae_titles = ae_titles
        self.context.policy = policy
        self.config = config
        log.info("configuration applied", extra={"ae_titles": sorted(ae_titles)})

    def _watch_config(self) -> None:
        """Apply the configuration the REST API stores, when it changed."""
        view = self.live.view()
        if view.config is not self.config or view.pipelines is not self._pipelines:
            self.apply_config(view.config, view.pipelines)

    def _housekeep(self) -> None:
        next_sweep = 0.0
        next_config = 0.0
        next_quarantine = 0.0
        while not self._stop.is_set():
            handlers.end_quietly_ended(self.context)
            now = time.monotonic()
            if now >= next_config:
                next_config = now + self.settings.live_config_seconds
                try:
                    self._watch_config()
                except Exception as exc:
                    log.warning(
                        "stored configuration not read; keeping the current one",
                        extra={"reason": getattr(exc, "reason", type(exc).__name__)},
                    )
            if now >= next_sweep and self.spool.recovering() == 0:
                next_sweep = now + self.settings.orphan_sweep_seconds
                try:
                    if self._bucket_ready or self._ensure_bucket(1):
                        due = self.sweep().next_due
                        if due is not None:  # a record seen at start: adopt it when due
                            next_sweep = min(next_sweep, now + max(due - time.time(), 0) + 0.1)
                except Exception as exc:
                    log.warning(
                        "sweep of incoming/ failed; trying again later",
                        extra={"reason": getattr(exc, "reason", type(exc).__name__)},
                    )
                    next_sweep = now + min(self.settings.orphan_sweep_seconds, 30.0)
            if now >= next_quarantine and self._bucket_ready:
                next_quarantine = now + self.settings.quarantine_check_seconds
                try:
                    self.check_quarantine()
                except Exception as exc:
                    log.warning(
                        "quarantine check failed; trying again later",
                        extra={"reason": getattr(exc, "reason", type(exc).__name__)},
                    )
            self._stop.wait(
                min(self.settings.association_check_seconds, self.settings.live_config_seconds)
            )


def run(settings: ServiceSettings, stop: threading.Event | None = None) -> None:
    """Run the receiver until ``stop`` is set."""
    stop = stop or threading.Event()
    receiver = Receiver(settings)
    receiver.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        receiver.stop()
