"""Limits of the worker's HTTP server against hostile clients ("Trust nothing on the wire").

Faust's aiohttp driver (faust/web/drivers/aiohttp.py) serves `web.web_app` with an
`AppRunner` it builds itself, with aiohttp's defaults: an idle connection lives an hour
(keepalive_timeout=3630 s), a request head may trickle in for as long (aiohttp has no
head-read timeout of its own), and there is no cap on connections. `install` replaces
that runner, before the server starts, with one whose connections are
`GuardedRequestHandler`s:

- a request head (request line and headers) must be complete within
  `http_head_timeout_s` of its first byte, however slowly it trickles (slowloris):
  the client gets a 408 and the connection is closed;
- a body the worker does not need (the API is GET-only) is read and dropped after the
  response for at most as long (aiohttp's lingering_time), then the connection is
  closed; a declared body over MAX_BODY_BYTES is refused with a 413 before that;
- a keep-alive connection with no request for `http_idle_timeout_s` is closed
  (aiohttp's keepalive_timeout, which also closes a connection that never sends a
  byte);
- beyond `http_max_connections` open connections a new one is closed at once,
  unanswered (reading its request first would cost what the cap saves);
- so is a client's new one beyond `http_max_connections_per_client` open connections
  from its IP address (the transport's peername), while other clients are still
  served: one client cannot take all the places of the global cap. The count of each
  address is exact (every accepted connection is counted down on its connection_lost,
  whatever closes it) and only addresses with an open connection are kept;
- every response says `Server: coin-ledger` (no versions) and carries
  `X-Content-Type-Options: nosniff`, also the parser's own refusals (an oversized
  request line), which are JSON like every other error.

Refusals are logged at most once per LOG_EVERY_S, with a count: a hostile client must
not be able to fill the log. The runner and handler hooks are aiohttp internals
(RequestHandler, Server, AppRunner._make_server), checked against aiohttp 3.14 by
tests/integration/test_hostile_http.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from pipeline.invariants import require
from pipeline.settings import Settings

log = logging.getLogger(__name__)

SERVER_NAME = "coin-ledger"  # the Server header: a name, no versions to look up exploits for
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff"}  # on every response (the dashboard adds its own)
MAX_BODY_BYTES = 1024  # client_max_size, and the largest declared body not refused with a 413
# aiohttp's parser limits: a request line or header line, and the number of headers.
# A 20 KB path is refused with a 400 (tests/integration/test_hostile_http.py).
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 64
LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class Limits:
    head_timeout_s: float
    idle_timeout_s: float
    max_connections: int
    max_connections_per_client: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(float(settings.http_head_timeout_s), float(settings.http_idle_timeout_s),
                   settings.http_max_connections, settings.http_max_connections_per_client)


class _Tally:
    """Counts an event and logs it at most once per LOG_EVERY_S, with the count."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.count = 0
        self.logged_at = -LOG_EVERY_S

    def note(self, *args: Any) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.logged_at >= LOG_EVERY_S:
            log.warning(self.message, self.count, *args)
            self.count, self.logged_at = 0, now


_REFUSED = _Tally("HTTP: refused %d connection(s) at the cap of %d open ones (PIPELINE_HTTP_MAX_CONNECTIONS)")
_REFUSED_CLIENT = _Tally("HTTP: refused %d connection(s) of clients at their cap of %d open ones each "
                         "(PIPELINE_HTTP_MAX_CONNECTIONS_PER_CLIENT; behind a proxy, raise it), the last from %s")
_SLOW_HEADS = _Tally("HTTP: closed %d connection(s) whose request head took over %.0f s "
                     "(PIPELINE_HTTP_HEAD_TIMEOUT_S)")


def _peer_of(transport: asyncio.BaseTransport) -> str | None:
    """The client's IP address (IPv4 or IPv6, as the peername gives it); None when the
    transport has none (not TCP), which no per-client cap applies to."""
    peername = transport.get_extra_info("peername")
    if isinstance(peername, (tuple, list)) and peername and isinstance(peername[0], str):
        return peername[0]
    return None


def _error_body(status: int) -> bytes:
    return json.dumps({"error": HTTPStatus(status).phrase.lower(), "status": status}).encode()


def _raw_response(status: int) -> bytes:
    """A whole HTTP/1.1 error response, written straight to the transport when no
    request was parsed to answer through aiohttp."""
    body = _error_body(status)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Server: {SERVER_NAME}",
            "Content-Type: application/json; charset=utf-8", f"Content-Length: {len(body)}", "Connection: close",
            *(f"{k}: {v}" for k, v in SECURITY_HEADERS.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedRequestHandler(RequestHandler):
    """One HTTP connection, with a head deadline and the connection caps."""

    __slots__ = ("_limits", "_peers", "_peer", "_refused", "_head_timer", "_last_payload")

    def __init__(self, manager: Server, *, limits: Limits, peers: dict[str, int], **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._peers = peers  # the server's open connections per client address
        self._peer: str | None = None  # this connection's address while it is counted in _peers
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._last_payload: Any = None  # the body stream of the last parsed request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if manager is not None and len(manager.connections) >= self._limits.max_connections:
            self._refused = True
            transport.close()
            _REFUSED.note(self._limits.max_connections)
            return
        peer = _peer_of(transport)
        if peer is not None:
            held = self._peers.get(peer, 0)
            if held >= self._limits.max_connections_per_client:
                self._refused = True
                transport.close()
                _REFUSED_CLIENT.note(self._limits.max_connections_per_client, peer)
                return
            self._peers[peer] = held + 1
            self._peer = peer  # counted down on connection_lost, whatever closes the connection
        try:
            super().connection_made(transport)
        except BaseException:
            self._uncount()
            raise

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        self._uncount()
        if not self._refused:  # a refused connection was never registered
            super().connection_lost(exc)

    def _uncount(self) -> None:
        """This connection's place in its client's count, given back once."""
        peer, self._peer = self._peer, None
        if peer is None:
            return
        left = self._peers.get(peer, 0) - 1
        if left > 0:
            self._peers[peer] = left
        else:
            self._peers.pop(peer, None)  # only clients with open connections are kept

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a head is complete
            self._stop_head_timer()
            self._last_payload = self._messages[-1][1] if self._messages else None
        elif data and self._head_timer is None and not self._reading_body() and not (self._close or self._force_close):
            # The first bytes of a head: it has head_timeout_s to be complete.
            self._head_timer = self._loop.call_later(self._limits.head_timeout_s, self._head_timed_out, parsed)

    def _reading_body(self) -> bool:
        return self._last_payload is not None and not self._last_payload.is_eof()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self, parsed: int) -> None:
        self._head_timer = None
        if self._request_count != parsed or self.transport is None:
            return
        _SLOW_HEADS.note(self._limits.head_timeout_s)
        idle = self._waiter is not None and not self._waiter.done() and not self._request_in_progress
        if idle:  # nothing else is being answered on this connection: say why it closes
            self.transport.write(_raw_response(408))
        self.force_close()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The parser's refusals (a 20 KB request line, binary junk) and aiohttp's own
        500s: JSON, with our headers, like every other error."""
        super().handle_error(request, status, exc, message)  # logs it (filtered to one line), checks nothing is sent
        resp = web.Response(status=status, body=_error_body(status), content_type="application/json",
                            headers={"Server": SERVER_NAME, **SECURITY_HEADERS})
        resp.force_close()
        return resp


class GuardedServer(Server):
    """aiohttp's Server for the application, making GuardedRequestHandlers."""

    def __init__(self, base: Server, limits: Limits) -> None:
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, loop=base._loop, **base._kwargs)
        self.limits = limits
        self.peers: dict[str, int] = {}  # open connections per client address (none: not kept)

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, limits=self.limits, peers=self.peers, **self._kwargs)


class GuardedRunner(web.AppRunner):
    __slots__ = ("_limits",)

    def __init__(self, app: web.Application, limits: Limits) -> None:
        super().__init__(
            app, access_log=None,  # as Faust's own runner
            keepalive_timeout=limits.idle_timeout_s, lingering_time=limits.head_timeout_s,
            max_line_size=MAX_LINE_BYTES, max_field_size=MAX_FIELD_BYTES, max_headers=MAX_HEADERS,
        )
        self._limits = limits

    async def _make_server(self) -> Server:
        return GuardedServer(await super()._make_server(), self._limits)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


@web.middleware
async def _refuse_bodies(request: web.Request, handler: Any) -> web.StreamResponse:
    """The API is GET-only: a declared body over MAX_BODY_BYTES, or one of unknown
    length (chunked), is refused before any handler runs."""
    length = request.content_length
    if (length is not None and length > MAX_BODY_BYTES) or (length is None and request.body_exists):
        response = web.json_response({"error": f"request bodies are limited to {MAX_BODY_BYTES} bytes",
                                      "status": 413}, status=413)
        response.force_close()
        return response
    answer: web.StreamResponse = await handler(request)
    return answer


def install(faust_web: Any, settings: Settings) -> None:
    """Guard the server of Faust's aiohttp driver `faust_web` (app.web); before it starts."""
    runner = faust_web._runner  # Faust's own AppRunner, not set up yet
    assert isinstance(runner, web.AppRunner)
    require(runner.server is None, "install before the web server starts")
    faust_web._runner = GuardedRunner(faust_web.web_app, Limits.of(settings))
    faust_web.web_app.on_response_prepare.append(_security_headers)
    faust_web.web_app.middlewares.insert(0, _refuse_bodies)
