"""`python -m pipeline redrive` against a real worker: a dry run sends nothing, filters
select, a still-malformed message comes back as a dead letter with the same bytes and is
not sent again, and a dead letter the ledger now accepts is sent and applied once however
often redrive runs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import pytest

from pipeline import topics
from pipeline.settings import PROJECT_ROOT
from tests.support.harness import Deployment, Worker, produce, run

pytestmark = pytest.mark.integration


def redrive(deployment: Deployment, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pipeline", "redrive", *args], cwd=PROJECT_ROOT,
                          env=deployment.env(web_port=1), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def dead_letters(deployment: Deployment, at_least: int, timeout_s: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = run(topics.read_values(deployment.settings(), topics.DEAD_LETTERS))
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_redrive_dry_run_filters_and_idempotent_apply(deployment: Deployment, workers: list[Worker]) -> None:
    deployment.create_topics()
    workers.append(Worker(deployment, "w1").start())
    ts = int(time.time() * 1000)
    bad_gifts = [b"{not json", b'{"event_id": "g1"}', b"[]"]
    run(produce(deployment.bootstrap, [(deployment.topic("gifts"), b"u1", v) for v in bad_gifts]
                + [(deployment.topic("recharges"), b"u1", b'{"event_id": 5}')]))
    found = dead_letters(deployment, 4)
    assert len(found) == 4

    # A recharge an older decoder refused, as its dead letter would read.
    fine = {"event_id": "late-1", "user_id": "u9", "coins": 500, "amount_cents": 499, "currency": "USD", "ts": ts}
    run(produce(deployment.bootstrap, [(deployment.topic(topics.DEAD_LETTERS), b"u9", json.dumps({
        "source_topic": deployment.topic("recharges"), "partition": 0, "offset": 0, "error": "refused by v0.0.1",
        "payload_b64": base64.b64encode(json.dumps(fine).encode()).decode()}).encode())]))

    out = redrive(deployment)
    assert "5 dead letters; 5 match; 5 to send" in out and "dry run" in out
    assert len(dead_letters(deployment, 6, timeout_s=3)) == 5  # nothing sent

    out = redrive(deployment, "--source-topic", "gifts", "--max", "2", "--apply")
    assert "3 match; 2 to send; 1 over --max" in out and "sent 2" in out
    again = dead_letters(deployment, 7)[5:]  # still malformed: back as dead letters
    assert [d["payload_b64"] for d in again] == [base64.b64encode(v).decode() for v in bad_gifts[:2]]
    assert {d["source_topic"] for d in again} == {deployment.topic("gifts")}
    # Neither the two sent nor their copies go again: only the third gift.
    out = redrive(deployment, "--source-topic", "gifts", "--apply")
    assert "5 match; 1 to send; 4 sent before or repeated" in out and "sent 1" in out
    assert len(dead_letters(deployment, 8)) == 8

    worker = workers[0]
    assert "sent 1" in redrive(deployment, "--error", "v0.0.1", "--apply")
    assert "sent 0" in redrive(deployment, "--error", "v0.0.1", "--apply")  # whatever the duplicate window
    deadline = time.monotonic() + 30
    while worker.get("/users/u9")[1]["coins"] != 500 and time.monotonic() < deadline:
        time.sleep(0.2)
    outcomes = [v for v in run(topics.read_values(deployment.settings(), topics.OUTCOMES)) if v["event_id"] == "late-1"]
    assert [o["status"] for o in outcomes] == ["accepted"]
    assert worker.get("/users/u9")[1]["coins"] == 500
