"""C-ECHO of a destination with pynetdicom: does it answer, and with which status."""

from __future__ import annotations

from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.config_api.models import EchoOut


def echo(
    name: str, ae_title: str, host: str, port: int, calling_ae_title: str, timeout: float
) -> EchoOut:
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout

    def answer(success: bool, status: str | None, message: str) -> EchoOut:
        return EchoOut(
            destination=name,
            aeTitle=ae_title,
            hostIp=host,
            port=port,
            success=success,
            status=status,
            message=message,
        )

    try:
        assoc: Any = ae.associate(host, port, ae_title=ae_title)
    except (OSError, ValueError) as exc:
        return answer(False, None, f"cannot associate: {type(exc).__name__}")
    if not assoc.is_established:
        if assoc.is_rejected:
            return answer(False, None, "association rejected")
        return answer(False, None, "no association (unreachable, aborted or timed out)")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status is None or "Status" not in status:
        return answer(False, None, "no C-ECHO response")
    code = int(status.Status)
    return answer(code == 0, f"0x{code:04X}", "success" if code == 0 else "C-ECHO failed")
