"""DICOM TLS contexts: the BCP 195 profile (PS3.15 B.9, RFC 9325) for receiver and exporter.

* TLS 1.2 or newer, never older; no compression, no renegotiation.
* TLS 1.2 cipher suites: ECDHE or DHE key exchange with AES-GCM only (forward secrecy,
  AEAD), the BCP 195 list; TLS 1.3 suites are all AEAD and stay OpenSSL's.
* A server (the receiver's TLS port) presents its certificate and, with
  ``verify-clients``, requires a client certificate issued by ``ca-certificates``.
* A client (the exporter, and the config API's C-ECHO of a destination) checks the
  destination's certificate against ``ca-certificates`` (else the system's store) and its
  name (``server-name``, else ``host-ip``) unless ``verify-hostname`` is false, and
  presents its own certificate when one is configured.

A file that cannot be read or does not hold what it should gives :class:`TlsConfigError`
(an InvalidInputError) naming the setting, never a traceback.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from shared.config import DestinationConfig, DestinationTlsConfig, ScpTlsConfig
from shared.errors import InvalidInputError

BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)


class TlsConfigError(InvalidInputError):
    """A TLS setting that cannot be used as it is."""


def _profile(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return context


def _load_chain(context: ssl.SSLContext, certificate: Path, key: Path, where: str) -> None:
    try:
        context.load_cert_chain(str(certificate), str(key))
    except FileNotFoundError as exc:
        raise TlsConfigError(
            f"{where}: certificate or private-key not found: {exc.filename}"
        ) from exc
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(
            f"{where}: certificate {certificate} and private-key {key} cannot be used "
            f"({getattr(exc, 'reason', None) or exc})"
        ) from exc


def _load_cas(context: ssl.SSLContext, cas: Path, where: str) -> None:
    try:
        context.load_verify_locations(cafile=str(cas))
    except FileNotFoundError as exc:
        raise TlsConfigError(f"{where}: ca-certificates not found: {cas}") from exc
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(
            f"{where}: ca-certificates {cas} cannot be used ({getattr(exc, 'reason', None) or exc})"
        ) from exc


def server_context(config: ScpTlsConfig, where: str = "dicom > scp > tls") -> ssl.SSLContext:
    """The receiver's TLS context."""
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(context, config.certificate, config.private_key, where)
    if config.ca_certificates is not None:
        _load_cas(context, config.ca_certificates, where)
    context.verify_mode = ssl.CERT_REQUIRED if config.verify_clients else ssl.CERT_NONE
    return context


def client_context(config: DestinationTlsConfig, where: str) -> ssl.SSLContext:
    """The exporter's TLS context for one destination."""
    context = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if config.ca_certificates is not None:
        _load_cas(context, config.ca_certificates, where)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = config.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if config.certificate is not None and config.private_key is not None:
        _load_chain(context, config.certificate, config.private_key, where)
    return context


def destination_tls_args(destination: DestinationConfig) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` (context, server name) to associate with ``destination``;
    None when it has no ``tls``. A setting that cannot be used gives TlsConfigError."""
    tls = destination.tls
    if tls is None:
        return None
    context = client_context(tls, f"destination {destination.name}: tls")
    return context, tls.server_name or destination.host_ip
