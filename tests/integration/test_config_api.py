"""The config API against a real object store (SeaweedFS) and a real RabbitMQ vhost."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import SecretStr
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.config_api.app import create_app
from services.config_api.main import ConfigApiService, run
from services.config_api.settings import ConfigApiSettings
from services.selector.selecting import volume_series
from shared import keys
from shared.broker import Broker
from shared.configstore import LiveConfig
from shared.errors import InvalidInputError
from shared.events import EXCHANGE, Envelope, JobFailed, event_id
from shared.settings import ServiceSettings
from shared.store import ObjectStore
from tests.conftest import RaisingJsonHandler
from tests.unit.selection_support import brain_mr

from .infra import free_port, wait_for_port

BASE = "http://localhost:5000"  # the reference's host, served by TestClient


@pytest.fixture
def store(settings: ServiceSettings) -> ObjectStore:
    store = ObjectStore(settings)
    store.ensure_bucket()
    return store


@pytest.fixture
def broker(settings: ServiceSettings) -> Iterator[Broker]:
    broker = Broker(settings, "test")
    broker.connect(attempts=3)
    yield broker
    broker.close()


def make_client(
    settings: ServiceSettings, store: ObjectStore, broker: Broker | None, **extra: Any
) -> TestClient:
    config = ConfigApiSettings(**{**settings.model_dump(), **extra})
    return TestClient(create_app(config, store, broker), base_url=BASE)


@pytest.fixture
def client(settings: ServiceSettings, store: ObjectStore, broker: Broker) -> TestClient:
    return make_client(settings, store, broker)


def stored_config(store: ObjectStore) -> dict[str, Any]:
    """Every configuration object (not the audit log), by key."""
    return {
        key: store.get_json(key)
        for key in store.list("config/")
        if not key.startswith("config/audit/")
    }


# -- the reference's example requests ------------------------------------------------

CLARA_AE = {
    "name": "clara-brain-tumor",
    "pipelineId": "7b9cda79ed834fdc87cd4169216c4011",
    "aeTitle": "BrainTumorModel",
    "timeout": 0,
}
CLARA_PIPELINE = {"name": "brain-tumor", "id": "7b9cda79ed834fdc87cd4169216c4011"}
CLARA_SOURCE = {"hostIp": "1.2.3.4", "aeTitle": "Orthanc"}
CLARA_DEST = {"name": "pacs", "hostIp": "10.20.30.40", "aeTitle": "ARCHIVEX", "port": 104}


def register_clara_pipeline(client: TestClient) -> None:
    """As in Clara, the pipeline exists (with the id the examples use) before an AE title
    names it: an AE title naming an unknown pipeline is refused."""
    answer = client.post("/api/v1/pipelines", json=CLARA_PIPELINE)
    assert answer.status_code == 201, answer.text
    assert answer.json()["definition"]["id"] == CLARA_PIPELINE["id"]


@pytest.mark.log_level("INFO")
def test_clara_example_requests(client: TestClient, store: ObjectStore) -> None:
    """Every REST example of the reference, at the default log level, answers its code."""
    unknown = client.post(f"{BASE}/api/config/claraaetitle", json=CLARA_AE)
    assert unknown.status_code == 400
    assert "7b9cda79ed834fdc87cd4169216c4011" in unknown.json()["message"]
    register_clara_pipeline(client)
    created = client.post(f"{BASE}/api/config/claraaetitle", json=CLARA_AE)
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["kind"] == "ClaraAeTitle"
    assert body["apiVersion"]
    assert body["metadata"]["name"] == "clara-brain-tumor"
    assert body["spec"]["aeTitle"] == "BrainTumorModel"
    assert body["spec"]["pipelineId"] == "7b9cda79ed834fdc87cd4169216c4011"

    source = client.post(f"{BASE}/api/config/sourceaetitle", json=CLARA_SOURCE)
    assert source.status_code == 200, source.text
    assert source.json()["kind"] == "Source"
    assert source.json()["spec"] == {"name": "Orthanc", "hostIp": "1.2.3.4", "aeTitle": "Orthanc"}

    # The reference's URL lacks "/api/" ('localhost:5000config/...'); the path is this one.
    dest = client.post(f"{BASE}/api/config/destinationaetitle", json=CLARA_DEST)
    assert dest.status_code == 200, dest.text
    assert dest.json()["kind"] == "Destination"
    assert dest.json()["spec"]["port"] == 104

    for path, kind, name in [
        ("claraaetitle", "ClaraAeTitleList", "clara-brain-tumor"),
        ("sourceaetitle", "SourceList", "Orthanc"),
        ("destinationaetitle", "DestinationList", "pacs"),
    ]:
        listed = client.get(f"{BASE}/api/config/{path}")
        assert listed.status_code == 200
        document = listed.json()
        assert set(document) == {"apiVersion", "kind", "items", "metadata"}
        assert document["kind"] == kind
        assert [item["metadata"]["name"] for item in document["items"]] == [name]

    # The reference's DELETE example sends a JSON body too; it is ignored.
    deleted = client.request(
        "DELETE",
        f"{BASE}/api/config/claraaetitle/clara-brain-tumor",
        headers={"Content-Type": "application/json"},
        content=json.dumps(
            {
                "name": "clara-brain-tumor1",
                "pipelineId": "7b9cda79ed834fdc87cd4169216c4011",
                "aeTitle": "BrainTumor1",
                "timeout": 0,
            }
        ),
    )
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["apiVersion"] == "v1"
    assert deleted.json()["kind"] == "Status"
    assert deleted.json()["status"] == "Success"
    assert client.get(f"{BASE}/api/config/claraaetitle").json()["items"] == []
    assert not store.exists(keys.config("ae-titles", "clara-brain-tumor"))


def test_clara_errors_are_400_and_change_nothing(client: TestClient, store: ObjectStore) -> None:
    register_clara_pipeline(client)
    assert client.post("/api/config/claraaetitle", json=CLARA_AE).status_code == 200
    before = stored_config(store)
    again = client.post("/api/config/claraaetitle", json=CLARA_AE)
    assert again.status_code == 400
    assert again.json()["kind"] == "Status"
    assert again.json()["reason"] == "AlreadyExists"
    too_long = client.post(
        "/api/config/claraaetitle", json={**CLARA_AE, "name": "x", "aeTitle": "A" * 17}
    )
    assert too_long.status_code == 400
    assert "16" in too_long.json()["message"]
    unknown = client.post(
        "/api/config/claraaetitle",
        json={**CLARA_AE, "name": "y", "aeTitle": "Y", "pipelineId": "nope"},
    )
    assert unknown.status_code == 400
    assert "pipeline 'nope'" in unknown.json()["message"]
    missing = client.post("/api/config/destinationaetitle", json={"name": "d", "hostIp": "h"})
    assert missing.status_code == 400
    assert client.delete("/api/config/sourceaetitle/nobody").status_code == 404
    assert stored_config(store) == before


@pytest.mark.log_level("INFO")
def test_every_write_answers_at_info(
    client: TestClient, store: ObjectStore, seriesflow_logging: RaisingJsonHandler
) -> None:
    """At the default log level every create, update and delete answers success and is
    logged; ``extra={"name": ...}`` once made each of them a 500 (KeyError in logging)."""
    writes = [
        (
            "POST",
            "/api/v1/destinations",
            {"name": "PACS", "aeTitle": "PACS", "hostIp": "h", "port": 104},
        ),
        ("POST", "/api/v1/sources", {"name": "ct1", "aeTitle": "CT1", "hostIp": "10.0.0.7"}),
        ("POST", "/api/v1/pipelines", {"name": "brain"}),
        ("POST", "/api/v1/ae-titles", {"aeTitle": "SF1", "pipeline": "brain"}),
        ("POST", "/api/config/claraaetitle", {**CLARA_AE, "pipelineId": "brain"}),
        ("POST", "/api/config/sourceaetitle", CLARA_SOURCE),
        ("POST", "/api/config/destinationaetitle", CLARA_DEST),
    ]
    for method, path, body in writes:
        answer = client.request(method, path, json=body)
        assert answer.status_code in (200, 201), (path, answer.text)
    for kind, name, change in [
        ("destinations", "PACS", {"name": "PACS", "aeTitle": "PACS", "hostIp": "h", "port": 11112}),
        ("sources", "ct1", {"name": "ct1", "aeTitle": "CT1", "hostIp": "10.0.0.8"}),
        ("pipelines", "brain", {"name": "brain", "image-format": "nii"}),
        ("ae-titles", "SF1", {"aeTitle": "SF1", "pipeline": "brain", "timeout": 3}),
    ]:
        revision = client.get(f"/api/v1/{kind}/{name}").json()["revision"]
        answer = client.put(f"/api/v1/{kind}/{name}", json=change, headers={"If-Match": revision})
        assert answer.status_code == 200, answer.text
    for path in [
        "/api/config/claraaetitle/clara-brain-tumor",
        "/api/config/sourceaetitle/Orthanc",
        "/api/config/destinationaetitle/pacs",
        "/api/v1/ae-titles/SF1",
        "/api/v1/pipelines/brain",
        "/api/v1/sources/ct1",
        "/api/v1/destinations/PACS",
    ]:
        answer = client.delete(path)
        assert answer.status_code in (200, 204), (path, answer.text)
    changes = [r for r in seriesflow_logging.records if r.getMessage() == "configuration changed"]
    assert len(changes) == len(writes) + 4 + 7
    assert {r.levelname for r in seriesflow_logging.records} >= {"INFO"}
    assert not [r for r in seriesflow_logging.records if r.levelno < logging.INFO]


# -- seriesflow's own API -------------------------------------------------------------


def test_crud_of_every_kind(client: TestClient, store: ObjectStore) -> None:
    assert client.post("/api/v1/pipelines", json={"name": "other"}).status_code == 201
    cases: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
        (
            "ae-titles",
            {"aeTitle": "SERIESFLOW1", "pipeline": "other"},
            {"timeout": 5},
            "SERIESFLOW1",
        ),
        (
            "sources",
            {"name": "ct1", "aeTitle": "CT1", "hostIp": "10.0.0.7"},
            {"hostIp": "ct1.example"},
            "ct1",
        ),
        (
            "destinations",
            {"name": "PACS", "aeTitle": "PACS", "hostIp": "10.0.0.9", "port": 104},
            {"port": 11112},
            "PACS",
        ),
    ]
    for kind, body, change, name in cases:
        created = client.post(f"/api/v1/{kind}", json=body)
        assert created.status_code == 201, created.text
        revision = created.json()["revision"]
        assert created.headers["etag"] == f'"{revision}"'
        got = client.get(f"/api/v1/{kind}/{name}")
        assert got.status_code == 200
        assert got.json()["revision"] == revision
        assert [o["name"] for o in client.get(f"/api/v1/{kind}").json()] == [name]
        updated = client.put(
            f"/api/v1/{kind}/{name}", json={**body, **change}, headers={"If-Match": revision}
        )
        assert updated.status_code == 200, updated.text
        assert updated.json()["revision"] != revision
        for field, value in change.items():
            assert client.get(f"/api/v1/{kind}/{name}").json()[field] == value

    pipeline = {
        "name": "brain",
        "image-format": "nii.gz",
        "rules": {"selections": [{"name": "T1", "conditions": {"Modality": "MR"}}]},
        "routes": [{"selection": "T1", "destinations": ["PACS"]}],
    }
    created = client.post("/api/v1/pipelines", json=pipeline)
    assert created.status_code == 201, created.text
    assert created.json()["definition"]["routes"] == pipeline["routes"]
    # A destination a pipeline routes to cannot be deleted.
    assert client.delete("/api/v1/destinations/PACS").status_code == 409
    revision = created.json()["revision"]
    updated = client.put(
        "/api/v1/pipelines/brain", json={**pipeline, "routes": [], "revision": revision}
    )
    assert updated.status_code == 200, updated.text
    assert client.get("/api/v1/pipelines/brain").json()["definition"]["routes"] == []

    # A pipeline an AE title runs cannot be deleted; the answer names the AE title.
    in_use = client.delete("/api/v1/pipelines/other")
    assert in_use.status_code == 409
    assert "SERIESFLOW1" in in_use.json()["message"]
    for kind, name in [
        ("pipelines", "brain"),
        ("destinations", "PACS"),
        ("sources", "ct1"),
        ("ae-titles", "SERIESFLOW1"),
        ("pipelines", "other"),
    ]:
        assert client.delete(f"/api/v1/{kind}/{name}").status_code == 204
        assert client.get(f"/api/v1/{kind}/{name}").status_code == 404
    assert stored_config(store) == {}

    audit = client.get("/api/v1/audit").json()
    assert len(audit) == 1 + 3 * 2 + 2 + 5  # pipeline "other", create + update per kind,
    # pipeline "brain", deletes
    assert audit[0]["kind"] == "pipelines"
    newest = audit[1]
    assert newest["action"] == "deleted"
    assert newest["kind"] == "ae-titles"
    assert newest["who"] == "anonymous-loopback"
    assert newest["before"]["ae-title"] == "SERIESFLOW1"
    assert newest["after"] is None


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("/api/v1/ae-titles", {"aeTitle": "A" * 17}, 422, "16"),
    ("/api/v1/ae-titles", {"name": "x", "aeTitle": "BAD\\AE"}, 422, "backslash"),
    ("/api/v1/ae-titles", {"name": "x", "aeTitle": "   "}, 422, "blank"),
    ("/api/v1/ae-titles", {"name": "x", "aeTitle": "CTRL\x01"}, 422, "printable"),
    ("/api/v1/ae-titles", {"name": "../x", "aeTitle": "OK"}, 422, ".."),
    ("/api/v1/sources", {"aeTitle": "CT", "hostIp": "not a host!"}, 422, "host"),
    (
        "/api/v1/destinations",
        {"name": "d", "aeTitle": "D", "hostIp": "h", "port": 0},
        422,
        "port",
    ),
    (
        "/api/v1/destinations",
        {"name": "d", "aeTitle": "D", "hostIp": "h", "port": 65536},
        422,
        "port",
    ),
    ("/api/v1/destinations", {"name": "d", "aeTitle": "D", "hostIp": "h"}, 422, "port"),
    ("/api/v1/ae-titles", {"aeTitle": "EXISTING", "pipeline": "p0"}, 409, "already"),
    ("/api/v1/ae-titles", {"name": "o", "aeTitle": "EXISTING", "pipeline": "p0"}, 409, "already"),
    ("/api/v1/ae-titles", {"aeTitle": "NEW"}, 422, "'NEW' names no pipeline"),
    ("/api/v1/ae-titles", {"aeTitle": "NEW", "pipeline": "nope"}, 422, "pipeline 'nope'"),
    (
        "/api/v1/pipelines",
        {"name": "p", "routes": [{"selection": "s", "destinations": ["nowhere"]}]},
        422,
        "nowhere",
    ),
    (
        "/api/v1/pipelines",
        {
            "name": "p",
            "rules": {"selections": [{"name": "s", "conditions": {"Modality": {"regx": "M"}}}]},
        },
        422,
        "unknown operator 'regx'",
    ),
    ("/api/v1/pipelines", {"name": "p", "rules-file": "/etc/passwd"}, 422, "inline"),
    ("/api/v1/pipelines", {"name": "p", "bogus": 1}, 422, "bogus"),
]


def test_bad_requests_change_nothing(client: TestClient, store: ObjectStore) -> None:
    assert client.post("/api/v1/pipelines", json={"name": "p0"}).status_code == 201
    answer = client.post("/api/v1/ae-titles", json={"aeTitle": "EXISTING", "pipeline": "p0"})
    assert answer.status_code == 201
    before = stored_config(store)
    for path, body, status, words in BAD_REQUESTS:
        answer = client.post(path, json=body)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["status"] == status
        assert words in answer.json()["message"], (body, answer.text)
        assert stored_config(store) == before, body


def test_other_errors(client: TestClient, store: ObjectStore) -> None:
    assert client.post("/api/v1/pipelines", json={"name": "p0"}).status_code == 201
    created = client.post("/api/v1/ae-titles", json={"aeTitle": "AE1", "pipeline": "p0"}).json()
    before = stored_config(store)
    malformed = client.post(
        "/api/v1/ae-titles", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    assert client.get("/api/v1/ae-titles/nobody").status_code == 404
    assert (
        client.put("/api/v1/ae-titles/nobody", json={"aeTitle": "X", "revision": "1"}).status_code
        == 404
    )
    no_revision = client.put("/api/v1/ae-titles/AE1", json={"aeTitle": "AE1", "timeout": 3})
    assert no_revision.status_code == 428
    stale = client.put(
        "/api/v1/ae-titles/AE1",
        json={"aeTitle": "AE1", "timeout": 3},
        headers={"If-Match": '"0abc"'},
    )
    assert stale.status_code == 409
    renamed = client.put(
        "/api/v1/ae-titles/AE1",
        json={"name": "AE2", "aeTitle": "AE1", "revision": created["revision"]},
    )
    assert renamed.status_code == 400
    assert client.delete("/api/v1/ae-titles/AE1", headers={"If-Match": "stale"}).status_code == 409
    assert client.get("/api/v1/jobs/not-a-job").status_code == 400
    assert client.get(f"/api/v1/jobs/{'0' * 32}").status_code == 404
    assert client.get("/api/v1/nothing-here").status_code == 404
    assert stored_config(store) == before


def test_two_replicas_updating_from_the_same_revision(
    settings: ServiceSettings, broker: Broker
) -> None:
    """Two API instances (two repositories, one bucket): one update wins, the other gets
    409, and the loser's retry from the new revision keeps both changes."""
    first_store, second_store = ObjectStore(settings), ObjectStore(settings)
    first_store.ensure_bucket()
    first = make_client(settings, first_store, None)
    second = make_client(settings, second_store, None)
    created = first.post(
        "/api/v1/destinations",
        json={"name": "PACS", "aeTitle": "PACS", "hostIp": "h1", "port": 104},
    )
    revision = created.json()["revision"]
    assert second.get("/api/v1/destinations/PACS").json()["revision"] == revision

    for _ in range(5):  # several rounds, each a real race between two threads
        current = first.get("/api/v1/destinations/PACS").json()
        barrier = threading.Barrier(2)
        answers: dict[str, httpx.Response] = {}

        def update(
            label: str,
            api: TestClient,
            port: int,
            read: dict[str, Any],
            barrier: threading.Barrier = barrier,
            answers: dict[str, httpx.Response] = answers,
        ) -> None:
            barrier.wait()
            answers[label] = api.put(
                "/api/v1/destinations/PACS",
                json={"aeTitle": "PACS", "hostIp": "h1", "port": port},
                headers={"If-Match": read["revision"]},
            )

        threads = [
            threading.Thread(target=update, args=("a", first, current["port"] + 1, current)),
            threading.Thread(target=update, args=("b", second, current["port"] + 2, current)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(a.status_code for a in answers.values())
        assert statuses == [200, 409], {k: a.text for k, a in answers.items()}
        winner = next(a for a in answers.values() if a.status_code == 200).json()
        stored = second.get("/api/v1/destinations/PACS").json()
        assert stored["port"] == winner["port"]
        assert stored["revision"] == winner["revision"]

    # The loser re-reads and retries: its change lands on top of the winner's.
    latest = second.get("/api/v1/destinations/PACS").json()
    retried = second.put(
        "/api/v1/destinations/PACS",
        json={"aeTitle": "PACS2", "hostIp": latest["hostIp"], "port": latest["port"]},
        headers={"If-Match": latest["revision"]},
    )
    assert retried.status_code == 200
    final = first.get("/api/v1/destinations/PACS").json()
    assert (final["aeTitle"], final["port"]) == ("PACS2", latest["port"])
    audit = first.get("/api/v1/audit").json()
    assert sum(r["action"] == "updated" for r in audit) == 6


def test_two_replicas_creating_the_same_name(settings: ServiceSettings) -> None:
    stores = [ObjectStore(settings), ObjectStore(settings)]
    stores[0].ensure_bucket()
    clients = [make_client(settings, s, None) for s in stores]
    barrier = threading.Barrier(2)
    answers: list[int] = []

    def create(api: TestClient, host: str) -> None:
        barrier.wait()
        answers.append(
            api.post(
                "/api/v1/sources", json={"name": "ct", "aeTitle": "CT", "hostIp": host}
            ).status_code
        )

    threads = [
        threading.Thread(target=create, args=(c, h))
        for c, h in zip(clients, ["h1", "h2"], strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [201, 409]


def test_changes_publish_config_changed(settings: ServiceSettings, client: TestClient) -> None:
    register_clara_pipeline(client)
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url.get_secret_value()))
    try:
        channel = connection.channel()
        channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, EXCHANGE, routing_key="config.changed")
        assert client.post("/api/config/claraaetitle", json=CLARA_AE).status_code == 200
        assert client.delete("/api/config/claraaetitle/clara-brain-tumor").status_code == 200
        bodies: list[Any] = []
        deadline = time.monotonic() + 10
        while len(bodies) < 2 and time.monotonic() < deadline:
            method, _, data = channel.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            bodies.append(Envelope.from_bytes(data).body)
        assert [(b.type, b.kind, b.name, b.action) for b in bodies] == [
            ("config.changed", "ae-titles", "clara-brain-tumor", "created"),
            ("config.changed", "ae-titles", "clara-brain-tumor", "deleted"),
        ]
    finally:
        connection.close()


# -- security -------------------------------------------------------------------------


def test_tokens(settings: ServiceSettings, store: ObjectStore, broker: Broker) -> None:
    api = make_client(
        settings,
        store,
        broker,
        api_token=SecretStr("single-token-123"),
        api_tokens=SecretStr("alice:alice-token-456,bob:bob-token-789"),
    )
    for method, path in [
        ("GET", "/api/config/claraaetitle"),
        ("POST", "/api/config/claraaetitle"),
        ("GET", "/api/v1/ae-titles"),
        ("GET", "/api/v1/jobs"),
        ("DELETE", "/api/v1/ae-titles/x"),
    ]:
        assert api.request(method, path).status_code == 401
        wrong = api.request(method, path, headers={"Authorization": "Bearer alice-token-45"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == "Bearer"
        basic = api.request(method, path, headers={"Authorization": "Basic alice-token-456"})
        assert basic.status_code == 401
    assert api.get("/health").status_code == 200
    alice = {"Authorization": "Bearer alice-token-456"}
    assert api.get("/api/v1/ae-titles", headers=alice).status_code == 200
    clara_pipeline = api.post("/api/v1/pipelines", json=CLARA_PIPELINE, headers=alice)
    assert clara_pipeline.status_code == 201
    assert api.post("/api/config/claraaetitle", json=CLARA_AE, headers=alice).status_code == 200
    single = {"Authorization": "Bearer single-token-123"}
    assert api.get("/api/config/claraaetitle", headers=single).status_code == 200
    audit = api.get("/api/v1/audit", headers=single).json()
    assert audit[0]["who"] == "alice"


def test_run_refuses_a_non_loopback_address_without_a_token(settings: ServiceSettings) -> None:
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        config = ConfigApiSettings(**{**settings.model_dump(), "host": host, "port": free_port()})
        with pytest.raises(InvalidInputError, match="no API token"):
            run(config, threading.Event())


def test_run_serves_on_loopback(settings: ServiceSettings) -> None:
    port = free_port()
    config = ConfigApiSettings(**{**settings.model_dump(), "host": "127.0.0.1", "port": port})
    with ConfigApiService(config):
        wait_for_port(port, timeout=20)
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        answer = httpx.post(f"http://127.0.0.1:{port}/api/config/sourceaetitle", json=CLARA_SOURCE)
        assert answer.status_code == 200


# -- rules, jobs and echo -------------------------------------------------------------


def test_rules_validate_and_explain(client: TestClient, store: ObjectStore) -> None:
    rules = {"selections": [{"name": "T1", "conditions": {"SeriesDescription": "(?i)t1"}}]}
    valid = client.post("/api/v1/rules/validate", json=rules)
    assert valid.status_code == 200
    assert valid.json()["selections"] == ["T1"]
    bad = client.post("/api/v1/rules/validate", json={"selections": [{"conditions": {}}]})
    assert bad.status_code == 422
    assert "name" in bad.json()["message"]

    job = "a" * 32
    metadata = brain_mr()
    store.put_bytes(keys.output(job, "dicom-metadata.json"), metadata.model_dump_json().encode())
    store.put_json(keys.output(job, "series-images.json"), volume_series(metadata))
    explained = client.post("/api/v1/rules/explain", json={"jobId": job, "rules": rules})
    assert explained.status_code == 200, explained.text
    assert explained.json()["explanation"]["result"]["T1"]
    assert "Selection" in explained.json()["text"]
    missing = client.post("/api/v1/rules/explain", json={"jobId": "b" * 32, "rules": rules})
    assert missing.status_code == 404


def test_jobs(client: TestClient, store: ObjectStore) -> None:
    job = "c" * 32
    failed = Envelope.wrap(
        JobFailed(pipeline="brain", stage="parse", reason="no DICOM instances"),
        job_id=job,
        producer="parser",
        event_id=event_id(job, "failed"),
    )
    store.put_json(keys.manifest(job), {"job_id": job})
    store.put_bytes(keys.event(job, "failed"), failed.to_bytes())
    store.put_json(keys.output(job, "selected-images.json"), {"T1": {"1.2.3": "1.2.3.nii.gz"}})
    listed = client.get("/api/v1/jobs").json()
    assert [(j["jobId"], j["stage"]) for j in listed] == [(job, "failed")]
    detail = client.get(f"/api/v1/jobs/{job}").json()
    assert detail["stage"] == "failed"
    assert detail["manifest"] is True
    assert detail["outputs"] == ["selected-images.json"]
    assert detail["errors"] == [{"stage": "parse", "reason": "no DICOM instances"}]
    assert client.get(f"/api/v1/jobs/{job}/selection").json() == {"T1": {"1.2.3": "1.2.3.nii.gz"}}
    assert client.get(f"/api/v1/jobs/{'d' * 32}/selection").status_code == 404


def test_echo_a_destination(client: TestClient) -> None:
    scp = AE(ae_title="ECHOSCP")
    scp.add_supported_context(Verification)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    try:
        body = {"name": "scp", "aeTitle": "ECHOSCP", "hostIp": "127.0.0.1", "port": port}
        assert client.post("/api/v1/destinations", json=body).status_code == 201
        answer = client.post("/api/v1/destinations/scp/echo")
        assert answer.status_code == 200
        assert answer.json()["success"] is True
        assert answer.json()["status"] == "0x0000"
    finally:
        server.shutdown()
    closed = {"name": "gone", "aeTitle": "GONE", "hostIp": "127.0.0.1", "port": free_port()}
    assert client.post("/api/v1/destinations", json=closed).status_code == 201
    answer = client.post("/api/v1/destinations/gone/echo")
    assert answer.status_code == 200
    assert answer.json()["success"] is False
    assert client.post("/api/v1/destinations/nobody/echo").status_code == 404


# -- property-based: schemathesis against the served OpenAPI document ---------------


def test_schemathesis_finds_no_server_errors(client: TestClient) -> None:
    """Positive and negative cases for every operation of /openapi.json: never a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    loopback = {"Host": "localhost"}  # without tokens, the API answers loopback names only
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app, headers=loopback)
    # Something to find: a destination, a pipeline and an AE title with known names.
    client.post(
        "/api/v1/destinations", json={"name": "PACS", "aeTitle": "P", "hostIp": "h", "port": 1}
    )
    client.post("/api/v1/pipelines", json=CLARA_PIPELINE)
    client.post("/api/config/claraaetitle", json=CLARA_AE)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if "echo" in operation.path and mode is GenerationMode.POSITIVE:
                continue  # a C-ECHO per example would only test the network's timeouts

            @hypothesis_settings(
                max_examples=6,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                response = case.call(headers=loopback)
                assert "host_not_allowed" not in response.text
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: "
                        f"{response.text[:200]}"
                    )

            try:
                check()
            except Unsatisfiable:  # e.g. no negative case exists for GET /health
                continue
    assert operations >= 20
    assert failures == []


# -- the configuration file's entries (Clara's read-*-from-crd) --------------------------


def file_client(
    settings: ServiceSettings, store: ObjectStore, tmp_path: Path, **flags: bool
) -> TestClient:
    """A client whose configuration file defines an AE title, a source and a destination,
    and whose pipelines folder defines ``filepipe``; ``flags`` are read-*-from-crd."""
    folder = tmp_path / "pipelines"
    folder.mkdir(exist_ok=True)
    (folder / "filepipe.yaml").write_text("name: filepipe\n")
    scp: dict[str, Any] = {
        "ae-titles": [{"ae-title": "FILEAE", "pipeline": "filepipe"}],
        "sources": [{"ae-title": "FILECT", "host-ip": "10.1.1.1"}],
    }
    scu: dict[str, Any] = {
        "destinations": [
            {"name": "FILEPACS", "ae-title": "FILEPACS", "host-ip": "10.1.1.2", "port": 104}
        ]
    }
    for flag, value in flags.items():
        (scu if "destinations" in flag else scp)[flag.replace("_", "-")] = value
    config = tmp_path / "seriesflow.yaml"
    config.write_text(yaml.safe_dump({"dicom": {"scp": scp, "scu": scu}}))
    return make_client(settings, store, None, config=config, pipelines=folder)


def test_the_file_entries_are_listed_and_win_unless_overridden(
    settings: ServiceSettings, store: ObjectStore, tmp_path: Path
) -> None:
    client = file_client(settings, store, tmp_path)
    titles = client.get("/api/v1/ae-titles").json()
    assert [(t["aeTitle"], t["origin"]) for t in titles] == [("FILEAE", "file")]
    clara = client.get("/api/config/claraaetitle").json()["items"]
    assert clara[0]["metadata"]["labels"] == {"seriesflow/origin": "file"}
    assert client.get("/api/v1/destinations/FILEPACS").json()["origin"] == "file"
    assert [s["aeTitle"] for s in client.get("/api/v1/sources").json()] == ["FILECT"]
    assert client.get("/api/v1/pipelines/filepipe").json()["origin"] == "file"

    # The file wins: the same AE title or destination again is a conflict that says so.
    again = {"aeTitle": "FILEAE", "pipeline": "filepipe", "timeout": 9}
    refused = client.post("/api/v1/ae-titles", json=again)
    assert refused.status_code == 409
    assert "configuration file" in refused.json()["message"]
    assert "overrideFile=true" in refused.json()["message"]
    dest = {"name": "FILEPACS", "aeTitle": "FILEPACS", "hostIp": "10.9.9.9", "port": 11112}
    assert client.post("/api/v1/destinations", json=dest).status_code == 409
    for path in ("/api/v1/destinations/FILEPACS", "/api/v1/pipelines/filepipe"):
        answer = client.delete(path)
        assert answer.status_code == 409, path
        assert "cannot be deleted through the API" in answer.json()["message"]
    assert stored_config(store) == {}

    # ... unless the request overrides it explicitly; the audit log says so.
    overridden = client.post("/api/v1/destinations?overrideFile=true", json=dest)
    assert overridden.status_code == 201, overridden.text
    assert overridden.json()["overridesFile"] is True
    assert client.get("/api/v1/audit").json()[0]["overrides_file"] is True
    live = LiveConfig(store, client.app.state.repository.static, 0.0)  # type: ignore[attr-defined]
    pacs = live.current().destination("FILEPACS")
    assert pacs is not None and (pacs.host_ip, pacs.port) == ("10.9.9.9", 11112)
    # Deleting the override brings the file's entry back.
    assert client.delete("/api/v1/destinations/FILEPACS").status_code == 204
    pacs = live.current().destination("FILEPACS")
    assert pacs is not None and pacs.host_ip == "10.1.1.2"

    # A stored entry written without the override (behind the API's back) does not win.
    store.put_json(
        keys.config("destinations", "FILEPACS"),
        {"kind": "destinations", "name": "FILEPACS", "spec": {**dest, "host-ip": "10.6.6.6"}},
    )
    pacs = live.current().destination("FILEPACS")
    assert pacs is not None and pacs.host_ip == "10.1.1.2"


def test_read_from_crd_flags(settings: ServiceSettings, store: ObjectStore, tmp_path: Path) -> None:
    # false: the file's entries only; the API refuses to write that kind.
    client = file_client(settings, store, tmp_path, read_destinations_from_crd=False)
    dest = {"name": "OTHER", "aeTitle": "OTHER", "hostIp": "10.9.9.9", "port": 104}
    refused = client.post("/api/v1/destinations", json=dest)
    assert refused.status_code == 409
    assert "read-destinations-from-crd: false" in refused.json()["message"]
    assert [d["name"] for d in client.get("/api/v1/destinations").json()] == ["FILEPACS"]
    # true: the file's list is not used; the API's entries only.
    client = file_client(settings, store, tmp_path, read_aetitles_from_crd=True)
    assert client.get("/api/v1/ae-titles").json() == []
    created = client.post("/api/v1/ae-titles", json={"aeTitle": "FILEAE", "pipeline": "filepipe"})
    assert created.status_code == 201, created.text
    assert created.json()["origin"] == "store"


def test_a_damaged_stored_object_is_reported_and_can_be_deleted(
    client: TestClient, store: ObjectStore
) -> None:
    store.put_bytes(keys.config("destinations", "broken"), b"{not json")
    assert client.post("/api/v1/pipelines", json={"name": "fine"}).status_code == 201
    answer = client.get("/api/v1/destinations/broken")
    assert answer.status_code == 422
    assert "damaged" in answer.json()["message"]
    assert client.get("/api/v1/destinations").json() == []  # left out, and logged
    assert [p["name"] for p in client.get("/api/v1/pipelines").json()] == ["fine"]
    assert client.delete("/api/v1/destinations/broken").status_code == 204
    assert not store.exists(keys.config("destinations", "broken"))
    assert client.get("/api/v1/audit").json()[0]["action"] == "deleted"
