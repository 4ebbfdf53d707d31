"""Hostile HTTP requests to a real worker: every refusal is a 4xx with a JSON error
(an oversized request line is refused by the HTTP parser itself, still a 4xx), and the
worker logs no traceback. Hostile connections (pipeline/http_guard.py): a head that never
ends or trickles in (slowloris), an idle keep-alive connection, more connections than the
cap, more connections from one client than its own cap; and what every response says of
the server (no versions, nosniff)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from agents.readmodel.redis_sink import hash_key
from pipeline.http_guard import SERVER_NAME
from tests.support.harness import Deployment, Worker

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
    # Unicode digits, which int() and str.isdigit() accept: a fullwidth and an Arabic-Indic 5.
    ("GET", "/alerts?limit=%EF%BC%95", 400, "limit must be"),
    ("GET", "/leaderboards/creators?limit=%D9%A5", 400, "limit must be"),
    # Days date.fromisoformat() takes (an ISO week date, trailing junk), and a fullwidth digit.
    ("GET", "/leaderboards/gifters?day=2026-W01-1", 400, "day must be"),
    ("GET", "/leaderboards/gifters?day=20260102xx", 400, "day must be"),
    ("GET", "/leaderboards/creators?period=day&day=2026-01-0%EF%BC%92", 400, "day must be"),
]


def assert_safe_headers(headers: dict[str, str], what: object) -> None:
    """No software or version in `Server`, and no content sniffing."""
    assert headers.get("Server", SERVER_NAME) == SERVER_NAME, (what, headers)
    assert headers.get("X-Content-Type-Options") == "nosniff", (what, headers)


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
        assert_safe_headers(headers, (method, path))
    got, body, headers = request(worker, "GET", "/users/" + "a" * 20_000)  # refused by the parser
    assert 400 <= got < 500 and b"Traceback" not in body and json.loads(body)["status"] == got
    assert_safe_headers(headers, "20 KB path")
    got, body, headers = request(worker, "GET", "/users/u1")
    assert got == 200 and headers["Content-Type"].startswith("application/json")
    assert_safe_headers(headers, "/users/u1")
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


# Short limits for the test (the defaults are 10 s, 30 s and 1,000): the head deadline
# well below the idle timeout, so a connection closed in time was closed by the former.
HEAD_S, IDLE_S, CAP = 3, 8, 8
SLACK_S = 2.0  # a loaded machine's scheduling delays
HEADER_EVERY_S = 1.0


def connect(worker: Worker) -> socket.socket:
    return socket.create_connection(("127.0.0.1", worker.port), timeout=5)


def read_until_closed(sock: socket.socket, started: float, limit_s: float = 30.0) -> tuple[float, bytes]:
    """Seconds from `started` until the server closed the connection, and what it sent."""
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {limit_s}s; got {data[:200]!r}") from None
    finally:
        sock.close()
    return time.monotonic() - started, data


def head_without_end(worker: Worker) -> tuple[float, bytes]:
    sock = connect(worker)
    started = time.monotonic()
    sock.sendall(b"GET /heal")  # no end of line, no end of headers
    return read_until_closed(sock, started)


def slowloris(worker: Worker) -> tuple[float, bytes, int]:
    """One more header line every HEADER_EVERY_S, never the blank line."""
    sock = connect(worker)
    started = time.monotonic()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    sock.settimeout(HEADER_EVERY_S)
    data, sent = b"", 0
    while time.monotonic() - started < 30:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            try:
                sock.sendall(f"X-Slow-{sent}: x\r\n".encode())
                sent += 1
            except OSError:
                break
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    return time.monotonic() - started, data, sent


def idle_after_a_request(worker: Worker) -> tuple[float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=5)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    resp.read()
    assert resp.will_close is False  # kept alive
    assert conn.sock is not None
    return read_until_closed(conn.sock, time.monotonic())[0], resp.status


def silent(worker: Worker) -> float:
    sock = connect(worker)
    return read_until_closed(sock, time.monotonic())[0]


def unwanted_body(worker: Worker) -> tuple[float, float, bytes]:
    """A declared body far over the cap, never sent: refused at once, closed after the drain."""
    sock = connect(worker)
    started = time.monotonic()
    sock.sendall(b"POST /users/u1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
    sock.settimeout(5)
    first = sock.recv(65536)
    answered = time.monotonic() - started
    closed, rest = read_until_closed(sock, started)
    return answered, closed, first + rest


def dashboard_stream(worker: Worker, hold_s: float) -> bytes:
    """A long response (server-sent events) outlives both timeouts: they are for reading requests."""
    sock = connect(worker)
    sock.sendall(b"GET /dashboard/events HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(0.5)
    data, deadline = b"", time.monotonic() + hold_s
    try:
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            assert chunk, f"the stream was closed after {data[:300]!r}"
            data += chunk
    finally:
        sock.close()
    return data


def test_slow_heads_idle_connections_and_unwanted_bodies_are_cut_off(deployment, workers: list[Worker]) -> None:  # type: ignore[no-untyped-def]
    deployment.extra_env.update({"PIPELINE_HTTP_HEAD_TIMEOUT_S": str(HEAD_S),
                                 "PIPELINE_HTTP_IDLE_TIMEOUT_S": str(IDLE_S)})
    deployment.create_topics()
    worker = Worker(deployment, "worker")
    workers.append(worker.start())
    with ThreadPoolExecutor(max_workers=6) as pool:  # all at once: the test lasts about IDLE_S
        head = pool.submit(head_without_end, worker)
        loris = pool.submit(slowloris, worker)
        idle = pool.submit(idle_after_a_request, worker)
        quiet = pool.submit(silent, worker)
        body = pool.submit(unwanted_body, worker)
        stream = pool.submit(dashboard_stream, worker, IDLE_S + HEAD_S)

        took, data = head.result()
        assert HEAD_S - 0.5 <= took <= HEAD_S + SLACK_S < IDLE_S, took  # the head deadline, not the idle timeout
        assert data.startswith(b"HTTP/1.1 408 ") and b"nosniff" in data and b'"status": 408' in data, data

        took, data, sent = loris.result()
        assert HEAD_S - 0.5 <= took <= HEAD_S + SLACK_S, took  # however often a header line came
        assert sent >= HEAD_S - 1 and data.startswith(b"HTTP/1.1 408 "), (sent, data)

        took, status = idle.result()
        assert status == 200 and IDLE_S - 0.5 <= took <= IDLE_S + SLACK_S, (status, took)
        took = quiet.result()
        assert IDLE_S - 0.5 <= took <= IDLE_S + SLACK_S, took  # never sent a byte

        answered, closed, data = body.result()
        assert answered < 2 and data.startswith(b"HTTP/1.1 413 "), (answered, data)
        assert closed <= HEAD_S + SLACK_S, closed  # the unsent body is waited for as long as a head

        data = stream.result()
        assert data.startswith(b"HTTP/1.1 200 ") and b"event: snapshot" in data, data[:300]
    assert worker.get("/health")[0] == 200
    assert "PIPELINE_HTTP_HEAD_TIMEOUT_S" in worker.log_path.read_text()  # said, once per interval at most


def served_once_freed(worker: Worker, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET /health, retried while refused: a place is free once the worker has seen a
    client's close, a moment after it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return request(worker, "GET", "/health")[:2]
        except (ConnectionError, http.client.RemoteDisconnected):
            assert time.monotonic() < deadline, "no place freed"
            time.sleep(0.1)


def test_connections_beyond_the_cap_are_refused_and_the_worker_still_serves(deployment, workers: list[Worker]) -> None:  # type: ignore[no-untyped-def]
    deployment.extra_env["PIPELINE_HTTP_MAX_CONNECTIONS"] = str(CAP)
    deployment.create_topics()
    worker = Worker(deployment, "worker")
    workers.append(worker.start())
    held = []
    for _ in range(CAP):  # each answered once, then kept alive: all counted by the server
        conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=5)
        conn.request("GET", "/health")
        assert conn.getresponse().read() and conn.sock is not None
        held.append(conn)
    for _ in range(3):
        sock = connect(worker)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        took, data = read_until_closed(sock, time.monotonic(), limit_s=5)
        assert data == b"" and took < 2, (took, data)  # closed at once, unanswered
    held.pop().close()
    got, body = served_once_freed(worker)  # the freed place is taken by the next connection
    assert got == 200 and json.loads(body)["status"] == "ok"
    for conn in held:
        conn.close()
    assert served_once_freed(worker)[0] == 200
    assert "PIPELINE_HTTP_MAX_CONNECTIONS" in worker.log_path.read_text()


PER_CLIENT = 4
FIRST, OTHER = "127.0.0.1", "127.0.0.2"  # two clients: all of 127.0.0.0/8 is loopback on Linux


def held_from(worker: Worker, source: str, timeout_s: float = 5.0) -> http.client.HTTPConnection:
    """A connection from `source`, answered once and kept alive (counted by the server);
    retried while refused, as a place is free only once the worker has seen a close."""
    deadline = time.monotonic() + timeout_s
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=5, source_address=(source, 0))
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() and not resp.will_close and conn.sock is not None
            assert conn.sock.getsockname()[0] == source
            return conn
        except (ConnectionError, http.client.RemoteDisconnected):
            conn.close()
            assert time.monotonic() < deadline, f"no place for {source}"
            time.sleep(0.1)


def assert_refused_at_once(worker: Worker, source: str) -> None:
    sock = socket.create_connection(("127.0.0.1", worker.port), timeout=5, source_address=(source, 0))
    started = time.monotonic()
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    except ConnectionError:
        pass  # closed before the request was even sent
    took, data = read_until_closed(sock, started, limit_s=5)
    assert data == b"" and took < 2, (source, took, data)  # closed at once, unanswered


def test_one_client_beyond_its_cap_is_refused_while_others_are_served(deployment, workers: list[Worker]) -> None:  # type: ignore[no-untyped-def]
    deployment.extra_env["PIPELINE_HTTP_MAX_CONNECTIONS_PER_CLIENT"] = str(PER_CLIENT)
    deployment.create_topics()
    worker = Worker(deployment, "worker")
    workers.append(worker.start())
    first = [held_from(worker, FIRST) for _ in range(PER_CLIENT)]
    for _ in range(3):
        assert_refused_at_once(worker, FIRST)
    other = [held_from(worker, OTHER, timeout_s=0.0) for _ in range(PER_CLIENT)]  # served at once, all of them
    assert_refused_at_once(worker, OTHER)  # its own cap, too
    assert_refused_at_once(worker, FIRST)

    first.pop().close()
    first.append(held_from(worker, FIRST))  # the freed place is the first client's again
    assert_refused_at_once(worker, FIRST)  # and only that one
    for conn in first + other:
        conn.close()
    # Every refusal and close counted exactly: each client has all its places again.
    first = [held_from(worker, FIRST) for _ in range(PER_CLIENT)]
    assert_refused_at_once(worker, FIRST)
    for conn in first:
        conn.close()
    assert served_once_freed(worker)[0] == 200
    log_text = worker.log_path.read_text()
    assert "PIPELINE_HTTP_MAX_CONNECTIONS_PER_CLIENT" in log_text and FIRST in log_text  # said, rate-limited


def test_an_internal_error_is_json_with_the_same_headers(deployment: Deployment) -> None:
    """A 500 (a foreign value in Redis): its traceback goes to the log, the client gets JSON
    with nosniff and no versions. This worker's expected traceback is checked here, not by
    the `workers` fixture, which fails a test on any."""
    deployment.create_topics()
    client = redis.Redis.from_url(deployment.redis_url)
    client.hset(hash_key(deployment.settings(), "user", "u500"), "coins", "not-a-number")
    worker = Worker(deployment, "worker500").start()
    try:
        got, body, headers = request(worker, "GET", "/users/u500")
        assert got == 500 and json.loads(body) == {"error": "internal error", "status": 500}, (got, body)
        assert b"not-a-number" not in body
        assert_safe_headers(headers, "500")
        assert request(worker, "GET", "/health")[0] == 200
    finally:
        worker.stop()
        client.close()
    crashes = worker.crashes()
    assert len(crashes) == 1 and "Traceback" in crashes[0], crashes  # the one 500, logged
