"""ASGI guards in front of `imgcls serve`, each refusing before the request body is read:

- WriteAuth: every write endpoint (any method but GET/HEAD/OPTIONS, except the open paths such as
  /predict) needs `Authorization: Bearer <token>`; with no token configured they answer 403.
- RateLimit: a token bucket per client address (rate per second, burst), 429 with Retry-After.
- BodyLimit: counts the bytes the app pulls from `receive` (chunked uploads without a Content-Length
  included) and answers 413 the moment the limit is crossed; nothing past it is read or spooled.

Refusals carry `Connection: close`: the server then drops the connection instead of reading and
discarding whatever the client still wants to send."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from starlette.exceptions import HTTPException

from tasks.common.errors import UserError
from tasks.common.feedback_inbox import token_id

TOKEN_ENV = "IMGCLS_FEEDBACK_TOKEN"
MIN_TOKEN_CHARS = 16
READ_METHODS = {"GET", "HEAD", "OPTIONS"}


# A refused request whose announced body is at most this big is read and discarded first: closing a
# connection with unread bytes makes the kernel send a reset, and the client never sees the answer.
DRAIN_LIMIT = 256 * 1024


async def drain(scope, receive) -> None:
    """Read and drop a small announced request body (never more than DRAIN_LIMIT bytes)."""
    length = _header(scope, b"content-length")
    if not (length and length.isdigit() and int(length) <= DRAIN_LIMIT):
        return
    received = 0
    while received <= DRAIN_LIMIT:
        message = await receive()
        received += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def refuse(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


# --- tokens --------------------------------------------------------------------------------------


def load_tokens(token_file: str | Path | None = None, environ: dict[str, str] | None = None) -> list[str]:
    """Writer tokens: one per line of --token-file (blank lines and # comments ignored), else the
    IMGCLS_FEEDBACK_TOKEN environment variable (comma-separated for several). [] = writes refused."""
    environ = os.environ if environ is None else environ
    if token_file:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except OSError as exc:
            raise UserError(f"--token-file {path}: {exc.strerror or exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UserError(f"--token-file {path}: readable by others (chmod 600 {path})")
        tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
        where = f"--token-file {path}"
    else:
        tokens = [t.strip() for t in environ.get(TOKEN_ENV, "").split(",") if t.strip()]
        where = TOKEN_ENV
    short = [t for t in tokens if len(t) < MIN_TOKEN_CHARS]
    if short:
        raise UserError(f"{where}: tokens must be at least {MIN_TOKEN_CHARS} characters")
    return tokens


class WriteAuth:
    def __init__(self, app, tokens: Iterable[str], open_paths: Iterable[str] = ("/predict",)):
        self.app = app
        # compared as digests: equal length, constant time, the tokens themselves are not kept around
        self.digests = [(hashlib.sha256(t.encode()).digest(), token_id(t)) for t in tokens]
        self.open_paths = set(open_paths)

    def check(self, authorization: str | None) -> tuple[int, str] | str:
        """The writer's token id, or (status, message) to refuse with."""
        if not self.digests:
            return 403, (
                f"write endpoints are disabled: no feedback token is configured "
                f"(set {TOKEN_ENV} or start the server with --token-file)"
            )
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return 401, "missing bearer token (Authorization: Bearer <token>)"
        digest = hashlib.sha256(credential.strip().encode()).digest()
        found = None
        for known, tid in self.digests:  # no early exit: the time taken does not say which one matched
            if hmac.compare_digest(known, digest):
                found = tid
        return found if found else (401, "invalid bearer token")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in READ_METHODS or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        result = self.check(_header(scope, b"authorization"))
        if isinstance(result, tuple):
            status, detail = result
            headers = {"www-authenticate": 'Bearer realm="imgcls"'} if status == 401 else None
            await drain(scope, receive)
            return await refuse(send, status, detail, headers)
        scope.setdefault("state", {})["token_id"] = result
        return await self.app(scope, receive, send)


# --- rate limit ----------------------------------------------------------------------------------


class TokenBuckets:
    """`burst` requests at once per key, refilled at `rate` per second. Memory stays bounded: past
    `max_keys` clients, buckets that have refilled completely (idle clients) are forgotten."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000, clock=time.monotonic):
        self.rate, self.burst, self.max_keys, self.clock = rate, max(1, burst), max_keys, clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last update)

    def take(self, key: str) -> float:
        """0 when allowed, else the seconds until the next request would be."""
        now = self.clock()
        tokens, last = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, now)
            if len(self.buckets) > self.max_keys:
                self._forget_idle(now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        full = [k for k, (t, last) in self.buckets.items() if t + (now - last) * self.rate >= self.burst]
        for key in full:
            del self.buckets[key]
        while len(self.buckets) > self.max_keys:  # all busy: drop the oldest
            del self.buckets[next(iter(self.buckets))]


class RateLimit:
    def __init__(self, app, rate: float, burst: int, exempt: Iterable[str] = ("/health", "/metrics")):
        self.app = app
        self.buckets = TokenBuckets(rate, burst) if rate > 0 else None
        self.exempt = set(exempt)

    async def __call__(self, scope, receive, send):
        if self.buckets is None or scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.buckets.take(client)
        if wait > 0:
            await drain(scope, receive)
            return await refuse(
                send,
                429,
                f"too many requests from {client}; retry in {wait:.1f} s",
                {"retry-after": str(max(1, math.ceil(wait)))},
            )
        return await self.app(scope, receive, send)


# --- body size -----------------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes", headers={"connection": "close"})


class BodyLimit:
    def __init__(self, app, max_body: int, message: str | None = None):
        self.app, self.max_body = app, max_body
        self.message = message or f"request body larger than {max_body} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.max_body):
            return await refuse(send, 413, self.message)
        received = 0
        tripped = started = replaced = False

        async def counted_receive():
            nonlocal received, tripped
            if tripped:
                raise BodyTooLarge(self.max_body)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    tripped = True
                    raise BodyTooLarge(self.max_body)
            return message

        async def guarded_send(message):
            nonlocal started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                if tripped and not started:  # whatever the app made of the cut-off body, the answer is 413
                    started = replaced = True
                    return await refuse(send, 413, self.message)
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if tripped and not started:
                return await refuse(send, 413, self.message)
            raise
