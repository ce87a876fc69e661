"""``wss://…/api/ws``: DataBus events pushed over a WebSocket (SPEC §4.4).

Protocol (JSON text frames). Client → server: ``{"op":"subscribe","subscription":n,
"claim_ttl"?:s}``, ``{"op":"ack","keys":[…]}``, ``{"op":"nack","keys":[…]}`` (give events
back unprocessed: their claim ends now and they are offered again, on this socket too),
``{"op":"ping"}``. Server → client: ``subscribed``, ``event`` (``{"subscription","event"}``),
``acked`` / ``nacked`` (``{"keys"}``, only the keys that were this connection's), ``pong``,
``heartbeat`` every HEARTBEAT s, and ``error`` (``{"code","message","request"?,
"subscription"?}``).

Pushed events are claimed for ``claim_ttl`` in the database, so nothing is delivered twice
while unacked; when the socket closes its claims are released at once, so a reconnecting
consumer gets them back immediately (after a crash, when the claim expires). A bad token
at the upgrade gets an accept + close 4401 (reason in the close frame); the token is
re-checked every AUTH_RECHECK s, so revocation or expiry closes the socket with 4401 too.
The upgrade and every client frame count against the key's rate limit like HTTP requests,
and a key holds at most ``ws_max_sockets_per_key`` sockets: past either, close 4429 (the
reason says which, and when to retry). Wake-ups
come from the ChangeFeed ``committed`` hook, with a POLL_INTERVAL fallback so several server
processes on one data dir also deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool

from mock_server.auth import Principal
from mock_server.databus import validate_name
from mock_server.errors import ApiError
from mock_server.http_json import parse_json_bytes
from mock_server.routes.ws_ekodb import EkoDBFeeds
from mock_server.state import AppState

router = APIRouter()

MAX_FRAME = 64 * 1024
HEARTBEAT = 5.0
POLL_INTERVAL = 1.0
AUTH_RECHECK = 1.0
MAX_INFLIGHT = 100
DEFAULT_CLAIM_TTL = 30.0
CLOSE_AUTH = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_BIG = 1009
#: The key is over its request rate limit, or holds too many sockets (reason says which).
CLOSE_RATE_LIMITED = 4429


class _Session:
    """One accepted socket: a reader task (client ops) and a pusher task (events)."""

    def __init__(self, ws: WebSocket, state: AppState, principal: Principal) -> None:
        self.ws = ws
        self.state = state
        self.principal = principal
        self.authorization = ws.headers.get("authorization")
        self.conn_id = "ws_" + secrets.token_hex(8)
        self.subs: dict[str, float] = {}  # name -> claim ttl
        self.inflight: dict[str, float] = {}  # event key -> claim deadline (monotonic)
        self.wake = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.last_sent = time.monotonic()
        self.closed = False
        # ekoDB's Subscribe / MutationNotification messages (routes/ws_ekodb.py)
        self.ekodb = EkoDBFeeds(state.realtime, self.send, lambda: self.principal)

    async def send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"))
        async with self.send_lock:
            if self.closed:
                return
            await self.ws.send_text(text)
            self.last_sent = time.monotonic()

    async def close(self, code: int, reason: str) -> None:
        async with self.send_lock:
            if not self.closed:
                self.closed = True
                with contextlib.suppress(Exception):
                    await self.ws.close(code, reason)

    async def error(self, code: str, message: str, **extra: Any) -> None:
        await self.send({"op": "error", "code": code, "message": message, **extra})

    # ---------------------------------------------------------------- reader

    async def read(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            text, data = msg.get("text"), msg.get("bytes")
            size = len(text.encode()) if text is not None else len(data or b"")
            if size > MAX_FRAME:
                await self.close(CLOSE_TOO_BIG, f"frame larger than {MAX_FRAME} bytes")
                return
            # every client frame is a request of the key: it counts against its limit
            refused = count_request(self.state, self.principal)
            if refused is not None:
                await self.close(CLOSE_RATE_LIMITED, refused)
                return
            try:
                raw = text.encode("utf-8", "surrogatepass") if text is not None else data or b""
                frame = parse_json_bytes(raw, max_depth=self.state.config.max_json_depth)
            except ApiError as exc:
                await self.error("bad_request", f"frame is not valid JSON: {exc.message}")
                continue
            if isinstance(frame, dict) and "op" not in frame and isinstance(frame.get("type"),
                                                                            str):
                await self.ekodb.handle(frame)
                continue
            if not isinstance(frame, dict) or not isinstance(frame.get("op"), str):
                await self.error("bad_request", 'frame must be an object with a string "op"')
                continue
            await self.dispatch(frame)

    async def dispatch(self, frame: dict[str, Any]) -> None:
        op = frame["op"]
        if op == "ping":
            await self.send({"op": "pong"})
        elif op == "subscribe":
            await self.subscribe(frame)
        elif op == "ack":
            await self.ack(frame)
        elif op == "nack":
            await self.nack(frame)
        else:
            await self.error("bad_request", f"unknown op {op[:32]!r}; expected subscribe, "
                             "ack, nack or ping")

    async def subscribe(self, frame: dict[str, Any]) -> None:
        name = frame.get("subscription")
        ttl = frame.get("claim_ttl", DEFAULT_CLAIM_TTL)
        try:
            validate_name(name)
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= 3600:
                raise ApiError(400, "validation_error", "claim_ttl must be in (0, 3600]")
            assert isinstance(name, str)
            # pushing claims events: the same level a poll needs
            principal = self.principal
            await run_in_threadpool(lambda: self.state.bus.get(
                principal.key_id, principal.scope, name, operation="poll"))
        except ApiError as exc:
            await self.error(exc.code, exc.message, request="subscribe",
                             subscription=name if isinstance(name, str) else None)
            return
        self.subs[name] = float(ttl)
        await self.send({"op": "subscribed", "subscription": name})
        self.wake.set()

    async def ack(self, frame: dict[str, Any]) -> None:
        keys = frame.get("keys")
        if not self.subs:
            await self.error("bad_request", "ack before subscribe", request="ack")
            return
        done: list[str] = []
        for name in list(self.subs):
            try:
                done += await run_in_threadpool(self.state.bus.ack, self.principal.key_id,
                                                self.principal.scope, name, keys)
            except ApiError as exc:
                await self.error(exc.code, exc.message, request="ack")
                return
        for key in done:
            self.inflight.pop(key, None)
        await self.send({"op": "acked", "keys": done})
        self.wake.set()

    async def nack(self, frame: dict[str, Any]) -> None:
        keys = frame.get("keys")
        if not self.subs:
            await self.error("bad_request", "nack before subscribe", request="nack")
            return
        done: list[str] = []
        for name in list(self.subs):
            try:
                done += await run_in_threadpool(self.state.bus.release_keys,
                                                self.principal.key_id, self.principal.scope,
                                                name, keys, self.conn_id)
            except ApiError as exc:
                await self.error(exc.code, exc.message, request="nack")
                return
        for key in done:
            self.inflight.pop(key, None)
        await self.send({"op": "nacked", "keys": done})
        self.wake.set()  # offer them again now

    # ---------------------------------------------------------------- pusher

    async def push(self) -> None:
        last_auth = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):  # distinct on 3.10
                await asyncio.wait_for(self.wake.wait(), POLL_INTERVAL)
            self.wake.clear()
            now = time.monotonic()
            if now - last_auth >= AUTH_RECHECK:
                last_auth = now
                try:
                    self.principal = await run_in_threadpool(
                        self.state.authenticator.principal, self.authorization,
                        self.state.client_ip_of(self.ws.scope))
                except ApiError as exc:
                    code = CLOSE_AUTH if exc.status == 401 else CLOSE_FORBIDDEN
                    await self.close(code, exc.message[:120])
                    return
            await self.deliver(now)
            if time.monotonic() - self.last_sent >= HEARTBEAT:
                await self.send({"op": "heartbeat"})

    async def deliver(self, now: float) -> None:
        self.inflight = {k: d for k, d in self.inflight.items() if d > now}
        for name, claim_ttl in list(self.subs.items()):
            room = MAX_INFLIGHT - len(self.inflight)
            if room <= 0:
                return
            try:
                events, more = await run_in_threadpool(self._poll, name, claim_ttl, room)
            except ApiError as exc:  # unsubscribed, expired or no longer allowed
                self.subs.pop(name, None)
                await self.error(exc.code, exc.message, subscription=name)
                continue
            for event in events:
                self.inflight[event["key"]] = now + claim_ttl
                await self.send({"op": "event", "subscription": name, "event": event})
            if more:
                self.wake.set()

    def _poll(self, name: str, claim_ttl: float, room: int
              ) -> tuple[list[dict[str, Any]], bool]:
        return self.state.bus.poll(self.principal.key_id, self.principal.scope, name,
                                   claim_ttl=claim_ttl, limit=room, claimed_by=self.conn_id)

    async def release(self) -> None:
        for name in list(self.subs):
            with contextlib.suppress(Exception):
                await run_in_threadpool(self.state.bus.release, self.principal.key_id, name,
                                        self.conn_id)


def count_request(state: AppState, principal: Principal) -> str | None:
    """Count one request (the upgrade, or a client frame) against the key's rate limit;
    the close reason when it is over. Called on the loop: the shared limiter's step is a
    few microseconds (no I/O)."""
    rec = principal.record
    limits = state.key_limits
    try:
        limits.enforce(rec.key_id, limits.limit_for(tier=rec.tier, is_admin=rec.is_admin,
                                                    override=rec.rate_limit))
    except ApiError as exc:
        retry = exc.headers.get("Retry-After", "1")
        return f"{exc.message}; retry after {retry}s"[:120]
    return None


@router.websocket("/api/ws")
async def websocket_endpoint(ws: WebSocket) -> None:
    state: AppState = ws.app.state.ekodb
    try:
        principal = await run_in_threadpool(
            state.authenticator.principal, ws.headers.get("authorization"),
            state.client_ip_of(ws.scope))
    except ApiError as exc:
        # Accept, then close with 4401/4403 and the reason: an HTTP denial response would be
        # nicer, but uvicorn's websockets-sansio protocol logs it as an unfinished handshake
        # and can leave the client's socket hanging; a close code works with every server.
        await ws.accept()
        await ws.close(CLOSE_AUTH if exc.status == 401 else CLOSE_FORBIDDEN, exc.message[:120])
        return
    refused = count_request(state, principal)  # the upgrade is a request of the key
    if refused is None and not state.ws_sockets.acquire(principal.key_id):
        refused = (f"too many open WebSockets for this key (at most "
                   f"{state.ws_sockets.cap}); close one first")
    if refused is not None:
        await ws.accept()
        await ws.close(CLOSE_RATE_LIMITED, refused)
        return
    try:
        await _serve(ws, state, principal)
    finally:
        state.ws_sockets.release(principal.key_id)


async def _serve(ws: WebSocket, state: AppState, principal: Principal) -> None:
    await ws.accept()
    session = _Session(ws, state, principal)
    loop = asyncio.get_running_loop()

    def waiter() -> None:
        loop.call_soon_threadsafe(session.wake.set)

    remove = state.bus.add_waiter(waiter)
    tasks = [asyncio.create_task(session.read()), asyncio.create_task(session.push())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            failure = task.exception()
            if failure is not None and not isinstance(failure, (OSError, RuntimeError)):
                raise failure
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        remove()
        await session.ekodb.close()
        await session.release()
        await session.close(1000, "bye")
