"""`/dashboard/events` on real workers: any worker's stream shows the whole fleet, the
token and ids are checked, open streams are bounded and do not hold up a shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
import redis

from pipeline import fleet
from pipeline.dashboard import routes
from tests.support.harness import Deployment, Worker

pytestmark = pytest.mark.integration

TOKEN = "stream-" + "s" * 25
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def snapshots(url: str, until: Any, timeout_s: float = 30.0) -> dict[str, Any]:
    """Read server-sent events until a snapshot satisfies `until`; returns it."""
    async with (
        aiohttp.ClientSession(headers=AUTH) as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp,
    ):
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        event, buffer = "", b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                lines = block.decode().splitlines()
                event = next((line[6:].strip() for line in lines if line.startswith("event:")), "")
                data = "".join(line[5:].strip() for line in lines if line.startswith("data:"))
                if event == "snapshot" and until(body := json.loads(data)):
                    return body
    raise AssertionError("stream ended")


def test_any_workers_stream_shows_the_fleet(deployment: Deployment, workers: list[Worker]) -> None:
    deployment.extra_env["PIPELINE_HTTP_TOKEN"] = TOKEN
    deployment.create_topics()
    workers += [Worker(deployment, f"w{i}").start() for i in (1, 2)]
    url = workers[0].url("/dashboard/events?stream=s1")
    # Both workers, sharing the partitions once the rebalance has settled.
    body = asyncio.run(snapshots(url, lambda b: len(b["fleet"]["workers"]) == 2 and all(
        w["partitions"] for w in b["fleet"]["workers"]) and sum(
        w["partitions"] for w in b["fleet"]["workers"]) == deployment.partitions))
    assert body["stream_id"] == "s1" and body["gifters"] == [] and body["alerts"] == []

    async def statuses() -> list[int]:
        async with aiohttp.ClientSession() as session:
            out = []
            for path, headers in (("/dashboard/events", {}), ("/dashboard/events?stream=a%20b", AUTH),
                                  ("/dashboard/events?creator=" + "c" * 65, AUTH), ("/dashboard", {}),
                                  ("/dashboard/static/app.js", {}), ("/dashboard/static/index.html", {})):
                async with session.get(workers[1].url(path), headers=headers) as resp:
                    out.append(resp.status)
                    if path.startswith("/dashboard/static/app") or path == "/dashboard":
                        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"], path
                        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
                    if resp.status == 400:
                        assert "^[A-Za-z0-9_.:-]{1,64}$" in (await resp.json())["error"]
            return out

    assert asyncio.run(statuses()) == [401, 400, 400, 200, 200, 404]

    # A crashed worker drops out of the fleet within the report's time to live.
    workers[1].kill()
    started = time.monotonic()
    asyncio.run(snapshots(url, lambda b: len(b["fleet"]["workers"]) == 1, timeout_s=30))
    assert time.monotonic() - started < 30


def test_streams_are_bounded_and_closed_at_shutdown(deployment: Deployment, workers: list[Worker]) -> None:
    # One client opens every stream here: above the per-client connection cap's default.
    deployment.extra_env["PIPELINE_HTTP_MAX_CONNECTIONS_PER_CLIENT"] = "200"
    deployment.create_topics()
    worker = Worker(deployment, "w1").start()
    workers.append(worker)

    async def scenario() -> tuple[int, float]:
        async with aiohttp.ClientSession() as session:
            url = worker.url("/dashboard/events")
            held = [await session.get(url) for _ in range(routes.MAX_STREAMS)]
            assert {r.status for r in held} == {200}
            async with session.get(url) as over:
                status = over.status
            started = time.monotonic()
            await asyncio.to_thread(worker.stop)
            for r in held:
                r.release()
            return status, time.monotonic() - started

    status, stop_s = asyncio.run(scenario())
    assert status == 503
    # A stopped worker leaves the fleet at once (its partitions are another's now).
    client = redis.Redis.from_url(deployment.redis_url)
    try:
        assert client.zcard(deployment.prefix + fleet.WORKERS) == 0
        assert not client.keys(deployment.prefix + fleet.report_key("*"))
    finally:
        client.close()
    assert worker.proc is not None and worker.proc.returncode == 0
    assert stop_s < 15, f"shutdown took {stop_s:.1f}s with streams open"
