"""Hostile HTTP requests to a real worker: every refusal is a 4xx with a JSON error
(an oversized request line is refused by the HTTP parser itself, still a 4xx), and the
worker logs no traceback."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.support.harness import Worker

pytestmark = pytest.mark.integration


def request(worker: Worker, method: str, path: str, auth: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=5)
    try:
        conn.request(method, path, headers={"Authorization": auth} if auth else {})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


CASES = [
    ("GET", "/nope", 404, "not found"),
    ("GET", "/users/u1/extra", 404, "not found"),
    ("POST", "/users/u1", 405, "method not allowed"),
    ("DELETE", "/alerts", 405, "method not allowed"),
    ("PUT", "/metrics", 405, "method not allowed"),
    ("GET", "/users/a%20b", 400, "user_id must match"),
    ("GET", "/users/" + "a" * 65, 400, "user_id must match"),
    ("GET", "/creators/%00", 400, "creator_id must match"),
    ("GET", "/creators/c1/windows?size=1y", 400, "size must be one of"),
    ("GET", "/leaderboards/streams/s1/gifters?limit=99999999999999999999999", 400, "limit must be"),
    ("GET", "/leaderboards/gifters?day=2026-02-30&limit=5", 400, "day must be"),
    ("GET", "/leaderboards/creators?period=week", 400, "period must be"),
    ("GET", "/alerts?limit=0", 400, "limit must be"),
    ("GET", "/alerts?limit=1e3", 400, "limit must be"),
]


def test_refusals_are_json_4xx_and_never_a_traceback(deployment, workers: list[Worker]) -> None:  # type: ignore[no-untyped-def]
    deployment.create_topics()
    worker = Worker(deployment, "worker")
    workers.append(worker.start())
    for method, path, status, message in CASES:
        got, body, headers = request(worker, method, path)
        assert got == status, (method, path, got, body)
        error = json.loads(body)
        assert error["status"] == status and message in error["error"], (path, error)
        if status == 405:
            assert "GET" in headers.get("Allow", "")
    got, body, _ = request(worker, "GET", "/users/" + "a" * 20_000)
    assert 400 <= got < 500 and b"Traceback" not in body
    assert request(worker, "GET", "/health")[0] == 200  # still serving


TOKEN = "t0ken-" + "x" * 26
OLD_TOKEN = "old-t0ken-" + "y" * 22  # still accepted while rotating


def test_a_bearer_token_guards_every_endpoint_but_health_and_metrics(deployment, workers: list[Worker]) -> None:  # type: ignore[no-untyped-def]
    deployment.extra_env["PIPELINE_HTTP_TOKEN"] = f"{TOKEN},{OLD_TOKEN}"
    deployment.create_topics()
    worker = Worker(deployment, "worker")
    workers.append(worker.start())  # its health check carries no token

    def status(path: str, auth: str | None) -> tuple[int, bytes]:
        return request(worker, "GET", path, auth)[:2]

    for path in ("/users/u1", "/creators/c1", "/alerts", "/leaderboards/creators", "/nope"):
        for auth in (None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN},{OLD_TOKEN}"):
            got, body = status(path, auth)
            assert got == 401 and json.loads(body)["status"] == 401, (path, auth, got)
    assert status("/users/u1", f"Bearer {TOKEN}")[0] == 200
    assert status("/users/u1", f"Bearer {OLD_TOKEN}")[0] == 200
    assert status("/nope", f"Bearer {TOKEN}")[0] == 404
    assert status("/health", None)[0] == 200 and status("/metrics", None)[0] == 200
    got, body = status("/live", None)
    assert got == 200 and json.loads(body)["status"] == "alive"
    assert TOKEN not in worker.log_path.read_text() and OLD_TOKEN not in worker.log_path.read_text()
