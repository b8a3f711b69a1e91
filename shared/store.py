"""The object store: one bucket on any S3-compatible server, through the minio client.

:class:`ObjectStore` is the only code that talks to the minio client. Above it,
:class:`shared.jobstore.JobStore` owns the jobs' objects and
:class:`shared.configstore.ConfigStore` the configuration; services use those two.

It offers what the project needs: plain and conditional puts (``If-None-Match: *`` to
create, ``If-Match: <etag>`` to replace what was read), reads with the object's ETag,
ranged reads, conditional deletes, listing with modification times. It creates the bucket
at start if it is missing. Errors are mapped in one place (:func:`_errors`):

=========================================  ==============================================
what happened                              raised
=========================================  ==============================================
the object does not exist                  :class:`ObjectNotFoundError` (permanent)
a condition (If-Match...) does not hold    :class:`PreconditionFailedError` (permanent)
the server is busy or unreachable          :class:`TransientError` ("object store busy /
                                           unreachable")
the server refuses (access denied...)      :class:`PermanentError` ("object store refused")
a local file cannot be read or written     :class:`LocalDiskFullError` (transient: no space
(``get_file``, ``put_file``)               left) or :class:`LocalFileError` (permanent),
                                           never "object store unreachable"
=========================================  ==============================================

Keys come from :mod:`shared.keys`.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from pathlib import Path
from typing import Any, BinaryIO

import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import S3Error

from shared.errors import OutputError, PermanentError, SeriesflowError, TransientError
from shared.metrics import Metrics
from shared.settings import ServiceSettings

_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"}
_TRANSIENT_S3 = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}
_PRECONDITION = {"PreconditionFailed"}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_Headers = dict[str, str | list[str] | tuple[str]]

PART_SIZE = 8 * 1024 * 1024
"""Files up to this size are one PUT; larger ones are uploaded in parts of this size."""
PARTS_IN_FLIGHT = 3


class ObjectNotFoundError(PermanentError):
    """The object does not exist."""


class PreconditionFailedError(PermanentError):
    """A conditional request's condition does not hold: the object exists already
    (``If-None-Match: *``) or has changed since it was read (``If-Match``)."""


class LocalDiskFullError(TransientError):
    """The local disk (not the object store) has no space left; may succeed later."""


class LocalFileError(OutputError):
    """A local file (not the object store) cannot be read or written."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    modified: datetime | None


def _etag(value: str | None) -> str:
    """An ETag without quotes or weak prefix."""
    return (value or "").strip().removeprefix("W/").strip('"')


class ObjectStore:
    def __init__(
        self, settings: ServiceSettings, *, timeout: float = 10.0, metrics: Metrics | None = None
    ) -> None:
        self.bucket = settings.s3_bucket
        self.metrics = metrics or Metrics("store")  # counts go nowhere unless served
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=max(timeout, 60.0)),
            maxsize=16,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
        )
        self._client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )

    @contextmanager
    def _errors(self, what: str, *, local: bool = False) -> Iterator[None]:
        """:func:`_errors`, counted in the metrics; a missing object or a condition that
        does not hold is an answer, not counted."""
        try:
            with _errors(what, local=local):
                yield
        except (ObjectNotFoundError, PreconditionFailedError):
            raise
        except SeriesflowError as exc:
            self.metrics.store_error(exc)
            raise

    def ensure_bucket(self) -> None:
        with self._errors("create bucket"):
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

    # -- writing ---------------------------------------------------------------------------

    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Store ``data``; when this returns, the object is durable. Returns its ETag.

        ``if_none_match`` creates only if nothing is stored at ``key``; ``if_match`` replaces
        only the object with that ETag. Otherwise :class:`PreconditionFailedError`.
        """
        headers: _Headers = {"Content-Type": content_type}
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match is not None:
            headers["If-Match"] = f'"{_etag(if_match)}"'
        with self._errors(f"put {key}"):
            # One PUT whatever the size (the bytes are in memory already): the client's
            # put_object would send more than 5 MiB as untyped parts (see put_file).
            result = self._client._put_object(self.bucket, key, data, headers)
        return _etag(result.etag)

    def put_json(self, key: str, data: Any, **conditions: Any) -> str:
        return self.put_bytes(
            key, json.dumps(data, indent=1).encode(), "application/json", **conditions
        )

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> None:
        """Store a local file; when this returns, the object is durable.

        A file of up to :data:`PART_SIZE` is one PUT. A larger one is a multipart upload of
        parts of that size, :data:`PARTS_IN_FLIGHT` at a time, each part sent with the
        object's Content-Type: the minio client sends parts without one, and SeaweedFS then
        guesses from the first bytes and gzips every chunk of a volume or DICOM file (about
        a third of its CPU for a CT volume, and again on every read). Held in memory: at
        most :data:`PARTS_IN_FLIGHT` parts.
        """
        with self._errors(f"put {key}", local=True), path.open("rb") as source:
            size = os.fstat(source.fileno()).st_size
            headers: _Headers = {"Content-Type": content_type}
            if size <= PART_SIZE:
                self._client._put_object(self.bucket, key, source.read(), headers)
                return
            upload_id = self._client._create_multipart_upload(self.bucket, key, dict(headers))
            try:
                parts = self._upload_parts(key, source, headers, upload_id)
                self._client._complete_multipart_upload(self.bucket, key, upload_id, parts)
            except BaseException:
                with suppress(Exception):
                    self._client._abort_multipart_upload(self.bucket, key, upload_id)
                raise
            stored = self._client.stat_object(self.bucket, key).size
        if stored != size:  # never report a short object as stored
            raise TransientError(f"put {key}: the object store holds {stored} of {size} bytes")

    def _upload_parts(
        self, key: str, source: BinaryIO, headers: _Headers, upload_id: str
    ) -> list[Part]:
        """Read ``source`` in parts and upload them, at most PARTS_IN_FLIGHT at a time."""

        def upload(number: int, data: bytes) -> Part:
            # A dict of its own: the client adds each request's length and signature to it.
            etag = self._client._upload_part(
                self.bucket, key, data, dict(headers), upload_id, number
            )
            return Part(number, etag)

        with ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="s3-part") as pool:
            pending: list[Future[Part]] = []
            parts: list[Part] = []
            for number in count(1):
                if len(pending) == PARTS_IN_FLIGHT:
                    parts.append(pending.pop(0).result())
                data = source.read(PART_SIZE)
                if not data:
                    break
                pending.append(pool.submit(upload, number, data))
            parts.extend(future.result() for future in pending)
        return parts

    # -- reading ---------------------------------------------------------------------------

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its ETag (its revision, for a later ``if_match``)."""
        return self._get(key, 0, 0)

    def _get(self, key: str, offset: int, length: int) -> tuple[bytes, str]:
        data, etag = b"", ""
        with self._errors(f"get {key}"):
            try:
                response = self._client.get_object(self.bucket, key, offset=offset, length=length)
            except S3Error as exc:
                if exc.code == "InvalidRange":  # an empty object, or a range beyond its end
                    return b"", ""
                raise
            try:
                data = bytes(response.read())
                etag = _etag(response.headers.get("ETag"))
            finally:
                response.close()
                response.release_conn()
        return data, etag

    def get_bytes(self, key: str) -> bytes:
        return self._get(key, 0, 0)[0]

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer if the object is shorter)."""
        if length <= 0:
            return b""
        return self._get(key, offset, length)[0]

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_file(self, key: str, path: Path) -> None:
        with self._errors(f"get {key}", local=True):
            self._client.fget_object(self.bucket, key, str(path))

    def stat(self, key: str) -> ObjectInfo:
        with self._errors(f"stat {key}"):
            info = self._client.stat_object(self.bucket, key)
        return ObjectInfo(key, _etag(info.etag), int(info.size or 0), info.last_modified)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str, recursive: bool = True) -> Iterator[str]:
        """Keys below ``prefix``; not recursive: the next level's keys and ``folders/``."""
        with self._errors(f"list {prefix}"):
            for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=recursive):
                if obj.object_name is not None:
                    yield obj.object_name

    def list_with_times(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        """Keys below ``prefix`` with their last-modified times."""
        with self._errors(f"list {prefix}"):
            for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.object_name is not None and obj.last_modified is not None:
                    yield obj.object_name, obj.last_modified

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects below ``prefix`` with ETag, size and last-modified time (one listing)."""
        with self._errors(f"list {prefix}"):
            for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.object_name is not None:
                    yield ObjectInfo(
                        obj.object_name, _etag(obj.etag), int(obj.size or 0), obj.last_modified
                    )

    # -- deleting --------------------------------------------------------------------------

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete ``key`` (no error if it is absent); with ``if_match``, only that revision."""
        with self._errors(f"delete {key}"):
            if if_match is None:
                self._client.remove_object(self.bucket, key)
            else:
                self._client._execute(
                    "DELETE", self.bucket, key, headers={"If-Match": f'"{_etag(if_match)}"'}
                )

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for key in keys:
            self.delete(key)
        return len(keys)

    # -- the server ------------------------------------------------------------------------

    def check_conditional_writes(self, probe_key: str) -> None:
        """Refuse a server that ignores If-None-Match (concurrent writes could be lost)."""
        self.put_bytes(probe_key, b"{}", "application/json", if_none_match=True)
        try:
            self.put_bytes(probe_key, b"{ }", "application/json", if_none_match=True)
        except PreconditionFailedError:
            return
        finally:
            self.delete(probe_key)
        raise PermanentError(
            "the object store ignores conditional writes (If-None-Match), so concurrent "
            "changes could be lost; use AWS S3, MinIO or a recent SeaweedFS (4.x)"
        )


@contextmanager
def _errors(what: str, *, local: bool = False) -> Iterator[None]:
    """Map minio, connection and local file errors onto the error hierarchy (the only
    place that does). ``local``: the operation reads or writes a local file too."""
    try:
        yield
    except (TransientError, PermanentError):
        raise
    except S3Error as exc:
        if exc.code in _NOT_FOUND:
            raise ObjectNotFoundError(f"{what}: not found") from exc
        if exc.code in _PRECONDITION:
            raise PreconditionFailedError(f"{what}: changed by someone else") from exc
        if exc.code in _TRANSIENT_S3:
            raise TransientError(f"{what}: object store busy ({exc.code})") from exc
        raise PermanentError(f"{what}: object store refused ({exc.code})") from exc
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, socket.gaierror) as exc:
        raise TransientError(f"{what}: object store unreachable ({type(exc).__name__})") from exc
    except OSError as exc:
        if not local:
            raise TransientError(
                f"{what}: object store unreachable ({type(exc).__name__})"
            ) from exc
        reason = exc.strerror or type(exc).__name__
        if exc.errno in _DISK_FULL:
            raise LocalDiskFullError(f"{what}: local disk full ({reason})") from exc
        raise LocalFileError(f"{what}: local file error ({reason})") from exc
    except ValueError as exc:
        if not local:
            raise
        # minio checks local paths itself ("path ... is not a directory")
        raise LocalFileError(f"{what}: local file error ({exc})") from exc
