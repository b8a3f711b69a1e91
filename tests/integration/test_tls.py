"""DICOM TLS: the receiver's TLS port against dcmtk's storescu +tls, the exporter against
dcmtk's storescp +tls. Certificates are made per test session with the openssl CLI: a CA,
a server certificate for 127.0.0.1, a client certificate from the CA and one from a CA
nobody trusts."""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.exporter.association import AssociationError, StoreAssociation
from services.exporter.meta import parse_file_meta
from services.exporter.status import StoreOutcome
from shared.config import DestinationConfig, SeriesflowConfig
from shared.configstore import LiveConfig
from shared.samples import write_ct_series
from shared.settings import ServiceSettings
from shared.store import ObjectStore
from shared.tls import BCP195_CIPHERS

from .infra import dcmtk, dcmtk_available, free_port, wait_for_port
from .test_config_api import make_client
from .test_receiver import running, storescu, write_config
from .test_receiver_network import TRANSPORT_LOGGER, Records, recording

pytestmark = pytest.mark.skipif(
    not dcmtk_available("storescu") or shutil.which("openssl") is None,
    reason="dcmtk or openssl is not installed",
)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", key, "-out", cert, cwd=folder,
    )  # fmt: skip
    return cert, key


def _issue(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, request, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    ext = folder / f"{name}.ext"
    ext.write_text(extensions)
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key,
        "-out", request, cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-days", "2", "-extfile", ext, "-out", cert, cwd=folder,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _ca(folder, "seriesflow-test-ca")
    rogue_ca = _ca(folder, "rogue-ca")
    server = _issue(
        folder,
        "server",
        ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    client = _issue(folder, "modality", ca, "extendedKeyUsage=clientAuth\n")
    rogue = _issue(folder, "rogue", rogue_ca, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], server[0], server[1], client[0], client[1], rogue[0], rogue[1])


@pytest.fixture
def ct(tmp_path: Path) -> list[Path]:
    return sorted(write_ct_series(tmp_path / "ct", slices=3, size=32))


@pytest.fixture
def transport_log() -> Iterator[Records]:
    with recording(TRANSPORT_LOGGER) as records:
        yield records


def storescu_tls(
    port: int, files: list[Path], key: Path | None, cert: Path | None, ca: Path
) -> subprocess.CompletedProcess[str]:
    identity = ["+tls", str(key), str(cert)] if key and cert else ["+tla"]
    return subprocess.run(
        [dcmtk("storescu"), *identity, "+cf", str(ca), "-aet", "MODALITY", "-aec", "SERIESFLOW",
         "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def tls_config(path: Path, port: int, tls_port: int, pki: Pki, **ae: object) -> Path:
    return write_config(
        path,
        port,
        ae_titles=[{"ae-title": "SERIESFLOW", "pipeline": "ct", **ae}],
        tls={
            "port": tls_port,
            "certificate": str(pki.server_cert),
            "private-key": str(pki.server_key),
            "verify-clients": True,
            "ca-certificates": str(pki.ca),
        },
    )


def test_receiver_over_tls_stores_for_a_trusted_client_and_refuses_others(
    settings: ServiceSettings, tmp_path: Path, pki: Pki, ct: list[Path], transport_log: Records
) -> None:
    port, tls_port = free_port(), free_port()
    config = tls_config(tmp_path / "config.yaml", port, tls_port, pki, **{"require-tls": True})
    with running(settings, config) as rx:
        assert rx.tls_port == tls_port
        trusted = storescu_tls(tls_port, ct, pki.client_key, pki.client_cert, pki.ca)
        assert trusted.returncode == 0, trusted.stdout + trusted.stderr
        untrusted = storescu_tls(tls_port, ct[:1], pki.rogue_key, pki.rogue_cert, pki.ca)
        assert untrusted.returncode != 0
        anonymous = storescu_tls(tls_port, ct[:1], None, None, pki.ca)
        assert anonymous.returncode != 0
        plain = storescu(port, ct[:1])  # require-tls: not on the plain port
        assert plain.returncode != 0
        assert "Called AE Title Not Recognized" in plain.stdout + plain.stderr
    failed = transport_log.matching("TLS handshake failed")
    assert len(failed) == 2
    assert all(r.tls and r.peer.startswith("127.0.0.1:") for r in failed)  # type: ignore[attr-defined]
    assert len(transport_log.matching("reachable over TLS only")) == 1


def test_receiver_tls_port_speaks_tls_1_2_or_newer_with_bcp195_suites_only(
    settings: ServiceSettings, tmp_path: Path, pki: Pki
) -> None:
    port, tls_port = free_port(), free_port()
    config = tls_config(tmp_path / "config.yaml", port, tls_port, pki)

    def handshake(configure: object) -> str:
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        configure(context)  # type: ignore[operator]
        with (
            socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return f"{tls.version()} {tls.cipher()[0]}"  # type: ignore[index]

    def tls12_static_rsa(context: ssl.SSLContext) -> None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("AES128-SHA256:AES256-SHA256:AES128-SHA")

    def tls12(context: ssl.SSLContext) -> None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2

    with running(settings, config):
        assert handshake(lambda c: None).startswith("TLSv1.3")
        version, cipher = handshake(tls12).split()
        assert version == "TLSv1.2"
        assert cipher in BCP195_CIPHERS.split(":")
        with pytest.raises(ssl.SSLError):
            handshake(tls12_static_rsa)


class TlsStoreSCP:
    """dcmtk's storescp +tls, requiring a client certificate from the test CA."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [dcmtk("storescp"), "+tls", str(pki.server_key), str(pki.server_cert),
             "+cf", str(pki.ca), "-rc", "--aetitle", "DEST", "--output-directory",
             str(directory), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def destination(port: int, pki: Pki, **tls: object) -> DestinationConfig:
    return DestinationConfig.model_validate(
        {
            "name": "pacs",
            "host-ip": "127.0.0.1",
            "port": port,
            "ae-title": "DEST",
            "tls": {
                "ca-certificates": str(pki.ca),
                "certificate": str(pki.client_cert),
                "private-key": str(pki.client_key),
                **tls,
            },
        }
    )


def send_all(target: DestinationConfig, files: list[Path]) -> list[StoreOutcome]:
    metas = [parse_file_meta(f.read_bytes(), complete=True) for f in files]
    contexts = tuple(sorted({(m.sop_class_uid, m.transfer_syntax_uid) for m in metas}))  # type: ignore[union-attr]
    association = StoreAssociation(target, "SERIESFLOW", contexts)
    association.open()
    try:
        return [association.send(f, m).outcome for f, m in zip(files, metas, strict=True)]  # type: ignore[arg-type]
    finally:
        association.close()


def test_exporter_sends_over_tls_to_storescp(tmp_path: Path, pki: Pki, ct: list[Path]) -> None:
    scp = TlsStoreSCP(tmp_path / "received", pki)
    try:
        outcomes = send_all(destination(scp.port, pki), ct)
        assert outcomes == [StoreOutcome.CONFIRMED] * len(ct)
        assert len(list((tmp_path / "received").iterdir())) == len(ct)
        # a destination whose certificate we cannot verify is not sent to
        with pytest.raises(AssociationError) as untrusted:
            send_all(destination(scp.port, pki, **{"ca-certificates": str(pki.rogue_cert)}), ct)
        assert untrusted.value.transient
        assert "TLS" in untrusted.value.reason
        # the certificate is for 127.0.0.1, not for another name
        with pytest.raises(AssociationError):
            send_all(destination(scp.port, pki, **{"server-name": "pacs.example"}), ct)
        # a TLS setting that cannot work is permanent
        with pytest.raises(AssociationError) as missing:
            send_all(destination(scp.port, pki, **{"private-key": str(tmp_path / "none")}), ct)
        assert not missing.value.transient
        assert len(list((tmp_path / "received").iterdir())) == len(ct)
    finally:
        scp.stop()


def test_tls_settings_flow_through_the_config_api(
    settings: ServiceSettings, tmp_path: Path, pki: Pki
) -> None:
    """A destination's ``tls`` and an AE title's ``requireTls`` posted through the REST API
    reach the configuration the exporter and receiver use (the live view)."""
    store = ObjectStore(settings)
    store.ensure_bucket()
    client = make_client(settings, store, None)
    tls = {"caCertificates": str(pki.ca), "certificate": str(pki.client_cert),
           "privateKey": str(pki.client_key), "serverName": "127.0.0.1"}  # fmt: skip
    body = {"name": "pacs", "aeTitle": "DEST", "hostIp": "127.0.0.1", "port": 2762, "tls": tls}
    created = client.post("/api/v1/destinations", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["tls"] == {**tls, "verifyHostname": True}
    half = {**body, "name": "half", "tls": {"certificate": str(pki.client_cert)}}
    refused = client.post("/api/v1/destinations", json=half)
    assert refused.status_code == 422
    assert "certificate and private-key go together" in refused.text
    assert client.post("/api/v1/pipelines", json={"name": "ct"}).status_code == 201
    ae = client.post("/api/v1/ae-titles", json={"aeTitle": "SECURE", "pipeline": "ct",
                                                "requireTls": True})  # fmt: skip
    assert ae.status_code == 201, ae.text
    assert client.get("/api/v1/ae-titles/SECURE").json()["requireTls"] is True

    view = LiveConfig(store, SeriesflowConfig(), 0.0).view().config
    stored = view.destination("pacs")
    assert stored is not None and stored.tls is not None
    assert stored.tls.certificate == pki.client_cert
    assert stored.tls.server_name == "127.0.0.1"
    secure = view.ae_title("SECURE")
    assert secure is not None and secure.require_tls


def test_the_config_api_echoes_a_tls_destination_over_tls(
    settings: ServiceSettings, tmp_path: Path, pki: Pki
) -> None:
    """``POST /destinations/{name}/echo`` reaches a TLS-only destination as the exporter
    does (its ``tls``), and says when the handshake is what failed."""
    scp = TlsStoreSCP(tmp_path / "received", pki)
    store = ObjectStore(settings)
    store.ensure_bucket()
    client = make_client(settings, store, None)
    tls = {"caCertificates": str(pki.ca), "certificate": str(pki.client_cert),
           "privateKey": str(pki.client_key)}  # fmt: skip
    target = {"aeTitle": "DEST", "hostIp": "127.0.0.1", "port": scp.port}
    try:
        for name, body in (
            ("pacs", {**target, "tls": tls}),
            ("untrusted", {**target, "tls": {**tls, "caCertificates": str(pki.rogue_cert)}}),
            ("plain", target),
        ):
            created = client.post("/api/v1/destinations", json={"name": name, **body})
            assert created.status_code == 201, created.text
        answer = client.post("/api/v1/destinations/pacs/echo")
        assert answer.status_code == 200
        assert answer.json()["success"] is True, answer.text
        assert answer.json()["status"] == "0x0000"
        # a certificate we cannot verify: no echo, and the answer names TLS
        untrusted = client.post("/api/v1/destinations/untrusted/echo").json()
        assert untrusted["success"] is False
        assert "TLS handshake" in untrusted["message"]
        # without tls the TLS-only port does not answer a plain association
        plain = client.post("/api/v1/destinations/plain/echo").json()
        assert plain["success"] is False
        assert "TLS" not in plain["message"]
    finally:
        scp.stop()
