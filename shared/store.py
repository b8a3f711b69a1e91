"""The object store: one bucket on any S3-compatible server, through the minio client.

All store access goes through :class:`ObjectStore`. It creates the bucket at start if it is
missing, turns connection problems into :class:`TransientError` (retry) and missing
objects into :class:`ObjectNotFoundError`. Keys come from :mod:`shared.keys`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import urllib3
from minio import Minio
from minio.error import S3Error

from shared.errors import PermanentError, TransientError
from shared.settings import ServiceSettings

_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"}
_TRANSIENT_S3 = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}


class ObjectNotFoundError(PermanentError):
    """The object does not exist."""


class ObjectStore:
    def __init__(self, settings: ServiceSettings, *, timeout: float = 10.0) -> None:
        self.bucket = settings.s3_bucket
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=max(timeout, 60.0)),
            maxsize=16,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
        )
        self.client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )

    def ensure_bucket(self) -> None:
        with _errors("create bucket"):
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Store ``data``; when this returns, the object is durable in the store."""
        with _errors(f"put {key}"):
            self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            )

    def put_json(self, key: str, data: Any) -> None:
        self.put_bytes(key, json.dumps(data, indent=1).encode(), "application/json")

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> None:
        with _errors(f"put {key}"):
            self.client.fput_object(self.bucket, key, str(path), content_type=content_type)

    def get_bytes(self, key: str) -> bytes:
        data = b""
        with _errors(f"get {key}"):
            response = self.client.get_object(self.bucket, key)
            try:
                data = response.read()
            finally:
                response.close()
                response.release_conn()
        return data

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_file(self, key: str, path: Path) -> None:
        with _errors(f"get {key}"):
            self.client.fget_object(self.bucket, key, str(path))

    def exists(self, key: str) -> bool:
        try:
            with _errors(f"stat {key}"):
                self.client.stat_object(self.bucket, key)
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str, recursive: bool = True) -> Iterator[str]:
        with _errors(f"list {prefix}"):
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=recursive):
                if obj.object_name is not None:
                    yield obj.object_name

    def list_with_times(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        """Keys below ``prefix`` with their last-modified times."""
        with _errors(f"list {prefix}"):
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.object_name is not None and obj.last_modified is not None:
                    yield obj.object_name, obj.last_modified

    def delete(self, key: str) -> None:
        with _errors(f"delete {key}"):
            self.client.remove_object(self.bucket, key)

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for key in keys:
            self.delete(key)
        return len(keys)


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """Map minio and connection errors onto the error hierarchy."""
    try:
        yield
    except (TransientError, PermanentError):
        raise
    except S3Error as exc:
        if exc.code in _NOT_FOUND:
            raise ObjectNotFoundError(f"{what}: not found") from exc
        if exc.code in _TRANSIENT_S3:
            raise TransientError(f"{what}: object store busy ({exc.code})") from exc
        raise PermanentError(f"{what}: object store refused ({exc.code})") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(f"{what}: object store unreachable ({type(exc).__name__})") from exc
