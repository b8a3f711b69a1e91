"""C-ECHO of a destination with pynetdicom: does it answer, and with which status.

A destination with ``tls`` is echoed over DICOM TLS with the exporter's own context
(:func:`shared.tls.destination_tls_args`), so the echo tests what an export would use."""

from __future__ import annotations

from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.config_api.models import EchoOut
from shared.config import DestinationConfig
from shared.tls import TlsConfigError, destination_tls_args


def echo(destination: DestinationConfig, calling_ae_title: str, timeout: float) -> EchoOut:
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout

    def answer(success: bool, status: str | None, message: str) -> EchoOut:
        return EchoOut(
            destination=destination.name,
            aeTitle=destination.ae_title,
            hostIp=destination.host_ip,
            port=destination.port,
            success=success,
            status=status,
            message=message,
        )

    try:
        tls_args = destination_tls_args(destination)
    except TlsConfigError as exc:
        return answer(False, None, exc.reason)
    try:
        assoc: Any = ae.associate(
            destination.host_ip,
            destination.port,
            ae_title=destination.ae_title,
            tls_args=tls_args,
        )
    except (OSError, ValueError) as exc:
        return answer(False, None, f"cannot associate: {type(exc).__name__}")
    if not assoc.is_established:
        if assoc.is_rejected:
            return answer(False, None, "association rejected")
        if tls_args is not None:
            return answer(
                False,
                None,
                "no association over TLS: unreachable, or the TLS handshake failed "
                "(the destination's certificate, tls > ca-certificates, tls > server-name)",
            )
        return answer(False, None, "no association (unreachable, aborted or timed out)")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status is None or "Status" not in status:
        return answer(False, None, "no C-ECHO response")
    code = int(status.Status)
    return answer(code == 0, f"0x{code:04X}", "success" if code == 0 else "C-ECHO failed")
