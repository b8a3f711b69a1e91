"""Services and DICOM peers as real OS processes, for end-to-end and crash tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from shared.settings import ServiceSettings

from .infra import dcmtk, free_port, wait_for_port

RULES = Path(__file__).resolve().parents[2] / "examples" / "rules" / "clara-t1c.json"


def service_environment(settings: ServiceSettings, config: Path, pipelines: Path) -> dict[str, str]:
    """The SERIESFLOW_* environment that gives a service process these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERIESFLOW_")}
    env.update(
        {
            "SERIESFLOW_CONFIG": str(config),
            "SERIESFLOW_PIPELINES": str(pipelines),
            "SERIESFLOW_AMQP_URL": settings.amqp_url.get_secret_value(),
            "SERIESFLOW_S3_ENDPOINT": settings.s3_endpoint,
            "SERIESFLOW_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
            "SERIESFLOW_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
            "SERIESFLOW_S3_BUCKET": settings.s3_bucket,
            "SERIESFLOW_S3_SECURE": "false",
            "SERIESFLOW_DELIVERY_LIMIT": str(settings.delivery_limit),
            "SERIESFLOW_RETRY_BACKOFF_SECONDS": str(settings.retry_backoff_seconds),
            "SERIESFLOW_RETRY_BACKOFF_MAX_SECONDS": str(settings.retry_backoff_max_seconds),
            "SERIESFLOW_LOG_LEVEL": "INFO",
        }
    )
    return env


class ServiceProcess:
    """``python -m seriesflow <service>`` with its output in ``log``."""

    def __init__(self, service: str, env: dict[str, str], log_dir: Path) -> None:
        self.service = service
        self.env = env
        self.log_path = log_dir / f"{service}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "seriesflow", self.service],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class StoreSCP:
    """dcmtk's storescp as a destination; each received object gets a file of its own
    (``--unique-filenames``), so an instance sent twice shows up twice."""

    def __init__(self, directory: Path, ae_title: str = "DEST") -> None:
        self.directory = directory
        self.ae_title = ae_title
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TCP_NODELAY="1")
        self.process = subprocess.Popen(
            [
                dcmtk("storescp"),
                "--aetitle",
                self.ae_title,
                "--output-directory",
                str(self.directory),
                "--unique-filenames",
                str(self.port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def write_brain_deployment(
    folder: Path, receiver_port: int, destination: StoreSCP
) -> tuple[Path, Path]:
    """The configuration file and pipelines folder of the brain T1c deployment: AE title
    SERIESFLOW on ``receiver_port`` for the source MODALITY, pipeline ``brain_t1c`` (Clara's
    T1c rules, nii.gz) routing the selection T1C to ``destination`` as ``pacs``."""
    config = folder / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dicom": {
                    "scp": {
                        "host": "127.0.0.1",
                        "port": receiver_port,
                        "ae-titles": [{"ae-title": "SERIESFLOW"}],
                        "reject-unknown-sources": True,
                        "sources": [{"host-ip": "127.0.0.1", "ae-title": "MODALITY"}],
                    },
                    "scu": {
                        "ae-title": "SERIESFLOW",
                        "destinations": [
                            {
                                "name": "pacs",
                                "host-ip": "127.0.0.1",
                                "port": destination.port,
                                "ae-title": destination.ae_title,
                            }
                        ],
                    },
                },
                "pipeline-mappings": [{"name": "brain_t1c", "clara-ae-title": "SERIESFLOW"}],
            }
        )
    )
    pipelines = folder / "pipelines"
    pipelines.mkdir()
    (pipelines / "brain.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "brain_t1c",
                "image-format": "nii.gz",
                "rules-file": str(RULES),
                "routes": [{"selection": "T1C", "destinations": ["pacs"]}],
            }
        )
    )
    return config, pipelines
