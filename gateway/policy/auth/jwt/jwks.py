"""An issuer's signing keys (its JWKS): fetched, refreshed, rotated and kept, all off the call path.

Each key set has a thread of its own that fetches the JWKS at start, then every ``jwks_refresh``
seconds (or the answer's ``Cache-Control: max-age``), and at once when a call asks for it because
its token names a key id the set does not hold. Fetches are at least ``jwks_min_refetch`` apart
whatever asks for them: calls that ask meanwhile wait for the fetch under way, or are told no.

A fetch that fails keeps the last good keys in use (logged, and counted by the watcher) for up to
``stale_after`` seconds since they were last fetched. With ``jwks_cache``, every good JWKS is also
written to that file, and read back at start if the issuer cannot be reached then.

Keys are parsed by PyJWT (``PyJWK``); each key is used only with the algorithms that fit it (its
own ``alg``, or its type's and curve's) among those the provider accepts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

# A JWKS or a discovery document larger than this is not one.
MAX_DOCUMENT_BYTES = 1024 * 1024
# Seconds between two log lines about one outage.
LOG_INTERVAL = 60.0

# The algorithms each kind of key can verify (RFC 7518), by key type, and by curve for EC and OKP.
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256"})
_BY_CURVE = {"P-256": frozenset({"ES256"}), "P-384": frozenset({"ES384"}), "Ed25519": frozenset({"EdDSA"})}
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age=(\d+)")


class JwksError(Exception):
    """A fetch or a document that gave no usable keys; the message says which and why."""


@dataclass(frozen=True, eq=False)
class SigningKey:
    """One public key: its id, the key itself, and the algorithms it is used with."""

    kid: str | None
    key: Any
    algorithms: frozenset[str]
    jwk: str  # the JWK as canonical JSON: the same key in the next fetch is this object again


@dataclass(frozen=True)
class Keys:
    """The keys of one JWKS, by key id."""

    by_kid: dict[str, SigningKey]
    every: tuple[SigningKey, ...]

    def holds(self, key: SigningKey) -> bool:
        return (key.kid is not None and self.by_kid.get(key.kid) is key) or key in self.every


def parse_jwks(document: bytes, accepted: frozenset[str], previous: Keys | None) -> tuple[Keys, list[str]]:
    """The usable keys of a JWKS document, and why others were skipped.

    Raises:
        JwksError: not a JWKS, or not one usable key in it.
    """
    try:
        data = json.loads(document)
    except (ValueError, UnicodeDecodeError):
        raise JwksError("the JWKS is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError('the JWKS is not a JSON object with a "keys" list')
    kept = {key.jwk: key for key in previous.every} if previous is not None else {}
    keys: list[SigningKey] = []
    skipped: list[str] = []
    for position, jwk in enumerate(data["keys"]):
        try:
            keys.append(_signing_key(jwk, accepted, kept))
        except JwksError as error:
            skipped.append(f"keys[{position}]: {error}")
    if not keys:
        reasons = "; ".join(skipped) or "it holds none"
        raise JwksError(f"no usable key in the JWKS ({reasons})")
    by_kid = {key.kid: key for key in keys if key.kid is not None}
    return Keys(by_kid, tuple(keys)), skipped


def _signing_key(jwk: Any, accepted: frozenset[str], kept: dict[str, SigningKey]) -> SigningKey:
    if not isinstance(jwk, dict):
        raise JwksError("not a JSON object")
    canonical = json.dumps(jwk, sort_keys=True)
    if canonical in kept:
        return kept[canonical]
    if jwk.get("use", "sig") != "sig":
        raise JwksError(f"use {jwk.get('use')!r}, not 'sig'")
    if "d" in jwk or jwk.get("kty") == "oct":
        raise JwksError("a secret or private key: a JWKS must hold public keys only")
    kty = jwk.get("kty")
    fitting = _RSA if kty == "RSA" else _BY_CURVE.get(jwk.get("crv", ""), frozenset())
    if "alg" in jwk:
        fitting = fitting & {jwk["alg"]}
    algorithms = fitting & accepted
    if not algorithms:
        raise JwksError(f"kty {kty!r} with alg {jwk.get('alg')!r} fits none of {', '.join(sorted(accepted))}")
    import jwt  # only a gateway with [[auth.jwt]] providers loads PyJWT (providers.py)

    try:
        parsed = jwt.PyJWK(jwk, algorithm=min(algorithms))
    except jwt.PyJWTError as error:
        raise JwksError(f"not a usable key ({error})") from None
    kid = jwk.get("kid")
    return SigningKey(kid if isinstance(kid, str) else None, parsed.key, frozenset(algorithms), canonical)


class KeySource(Protocol):
    """Where a JWKS comes from (``origin``, as the config names it): ``fetch`` returns the document
    and its max-age (seconds) if it has one."""

    origin: str

    def fetch(self, timeout: float) -> tuple[bytes, float | None]: ...


def _get(url: str, timeout: float) -> tuple[bytes, float | None]:
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "grpc-gateway"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read(MAX_DOCUMENT_BYTES + 1)
            cache_control = response.headers.get("Cache-Control") or ""
    except urllib.error.HTTPError as error:
        raise JwksError(f"{url} answered HTTP {error.code}") from None
    except urllib.error.URLError as error:
        reason = error.reason if isinstance(error.reason, str) else getattr(error.reason, "strerror", None)
        raise JwksError(f"cannot reach {url} ({reason or error.reason})") from None
    except TimeoutError:
        raise JwksError(f"no answer from {url} within {timeout} s") from None
    except OSError as error:
        raise JwksError(f"cannot read from {url} ({error.strerror or type(error).__name__})") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise JwksError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
    found = _MAX_AGE.search(cache_control)
    return body, float(found.group(1)) if found else None


class UrlSource:
    def __init__(self, url: str) -> None:
        self.origin = url
        self._url = url

    def fetch(self, timeout: float) -> tuple[bytes, float | None]:
        return _get(self._url, timeout)


class FileSource:
    """A JWKS in a file, read again at every refresh: replacing the file rotates the keys."""

    def __init__(self, path: str) -> None:
        self.origin = path
        self._path = Path(path)

    def fetch(self, timeout: float) -> tuple[bytes, float | None]:
        try:
            return self._path.read_bytes()[: MAX_DOCUMENT_BYTES + 1], None
        except OSError as error:
            raise JwksError(f"cannot read {self._path} ({error.strerror})") from None


class DiscoveredSource:
    """The ``jwks_uri`` of the issuer's OpenID Connect discovery document, found again after a failure."""

    def __init__(self, issuer: str) -> None:
        self._issuer = issuer
        self._discovery = issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._jwks_uri: str | None = None
        self.origin = self._discovery

    def fetch(self, timeout: float) -> tuple[bytes, float | None]:
        if self._jwks_uri is None:
            self._jwks_uri = self._discover(timeout)
        try:
            return _get(self._jwks_uri, timeout)
        except JwksError:
            self._jwks_uri = None  # the provider may have moved its keys: ask again next time
            raise

    def _discover(self, timeout: float) -> str:
        body, _ = _get(self._discovery, timeout)
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise JwksError(f"{self._discovery} is not JSON") from None
        if not isinstance(document, dict) or document.get("issuer") != self._issuer:
            raise JwksError(f"{self._discovery} is not the discovery document of issuer {self._issuer}")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
            raise JwksError(f"{self._discovery} names no http(s) jwks_uri")
        return uri


class JwksWatcher(Protocol):
    """Told of every fetch of a key set, and how to read its keys' age (the gateway's metrics)."""

    def jwks_fetched(self, issuer: str, ok: bool, keys: int) -> None: ...

    def jwks_age(self, issuer: str, age: Callable[[], float]) -> None: ...


@dataclass(frozen=True)
class Timing:
    refresh: float
    min_refetch: float
    timeout: float
    stale_after: float


def _running_future() -> Future[None]:
    """A future no waiter can cancel: one that gives up waiting must not end the wait of others."""
    future: Future[None] = Future()
    future.set_running_or_notify_cancel()
    return future


class KeySet:
    """One issuer's keys, kept current by a thread of its own from ``start()`` to ``stop()``.

    Read from any thread: ``keys`` (None until the first good fetch), ``fetched_at`` and
    ``stale_at`` (epoch seconds), ``last_error`` (None while fetches succeed).
    """

    def __init__(
        self,
        issuer: str,
        source: KeySource,
        accepted: frozenset[str],
        timing: Timing,
        cache_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.source = source
        self._accepted = accepted
        self.timing = timing
        self._cache_file = cache_file
        self._clock = clock
        self.keys: Keys | None = None
        self.fetched_at = 0.0
        self.stale_at = 0.0
        self.last_error: str | None = None
        self.watcher: JwksWatcher | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: Future[None] | None = None  # the fetch asked for or under way
        self._last_attempt = -timing.min_refetch
        self._next_refresh = 0.0
        self._failures = 0
        self._next_log = 0.0
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.ready: Future[None] = _running_future()  # done once the set has keys

    def same_source(self, other: KeySet) -> bool:
        """Whether ``other`` (a new config's) would fetch the same keys the same way."""
        return (self.issuer, self.source.origin, self._accepted, self.timing, self._cache_file) == (
            other.issuer,
            other.source.origin,
            other._accepted,
            other.timing,
            other._cache_file,
        )

    def watch(self, watcher: JwksWatcher | None) -> None:
        self.watcher = watcher
        if watcher is not None:
            watcher.jwks_age(self.issuer, self.age)

    def age(self) -> float:
        """Seconds since the keys in use were last fetched (0 before any)."""
        return max(0.0, time.time() - self.fetched_at) if self.keys is not None else 0.0

    def start(self) -> None:
        """Fetch now and keep refreshing, on a thread of its own. Idempotent."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"jwks {self.issuer}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def fetch_soon(self) -> Future[None] | None:
        """Ask for a fetch (a token names a key id the set lacks): the future of the fetch under way
        or asked for now, done when it ends; None while fetches are throttled."""
        with self._lock:
            if self._pending is not None:
                return self._pending
            if self._clock() - self._last_attempt < self.timing.min_refetch or self._stopped:
                return None
            self._pending = _running_future()
        self._wake.set()
        return self._pending

    def _run(self) -> None:
        while True:
            self._wake.wait(max(0.0, self._next_refresh - self._clock()))
            self._wake.clear()
            if self._stopped:
                break
            with self._lock:
                if self._pending is None:
                    if self._clock() < self._next_refresh:
                        continue
                    self._pending = _running_future()
                pending = self._pending
                self._last_attempt = self._clock()
            try:
                self._fetch()
            finally:
                with self._lock:
                    self._pending = None
                pending.set_result(None)
        # A fetch asked for as the set stopped: its waiters go on without it.
        with self._lock:
            if self._pending is not None:
                self._pending.set_result(None)

    def _fetch(self) -> None:
        try:
            document, max_age = self.source.fetch(self.timing.timeout)
            keys, skipped = parse_jwks(document, self._accepted, self.keys)
        except JwksError as error:
            self._failed(str(error))
            return
        except Exception as error:  # whatever else fails on the way: the keys in use stay
            self._failed(f"{type(error).__name__}: {error}")
            return
        refresh = max(self.timing.min_refetch, max_age) if max_age is not None else self.timing.refresh
        self._next_refresh = self._clock() + refresh
        if self.last_error is not None and self.keys is not None:
            log.warning("JWKS fetched again", extra={"issuer": self.issuer, "failures": self._failures})
        self.last_error = None
        self._failures = 0
        self._use(keys, time.time(), skipped)
        watcher = self.watcher
        if watcher is not None:
            watcher.jwks_fetched(self.issuer, True, len(keys.every))
        self._write_cache(document)

    def _use(self, keys: Keys, fetched_at: float, skipped: list[str]) -> None:
        previous = self.keys
        if previous is None or previous.every != keys.every:
            log.info(
                "JWKS keys in use",
                extra={
                    "issuer": self.issuer,
                    "kids": sorted(keys.by_kid),
                    "skipped": skipped,
                    "source": self.source.origin,
                },
            )
        self.keys = keys
        self.fetched_at = fetched_at
        self.stale_at = fetched_at + self.timing.stale_after
        if not self.ready.done():
            self.ready.set_result(None)

    def _failed(self, error: str) -> None:
        self._failures += 1
        self.last_error = error
        # Try again sooner than a refresh: twice the throttle, doubling up to the refresh interval.
        backoff = min(self.timing.refresh, self.timing.min_refetch * 2 ** min(self._failures, 16))
        self._next_refresh = self._clock() + backoff
        watcher = self.watcher
        if watcher is not None:
            watcher.jwks_fetched(self.issuer, False, len(self.keys.every) if self.keys is not None else 0)
        if self.keys is None:
            self._read_cache()
        now = self._clock()
        if now >= self._next_log:
            self._next_log = now + LOG_INTERVAL
            log.warning(
                "JWKS fetch failed; the last good keys stay in use"
                if self.keys is not None
                else "JWKS fetch failed; no keys yet",
                extra={
                    "issuer": self.issuer,
                    "error": error,
                    "failures": self._failures,
                    "keys_age_seconds": round(self.age(), 1),
                    "retry_in_seconds": round(backoff, 1),
                },
            )

    def _write_cache(self, document: bytes) -> None:
        if self._cache_file is None:
            return
        record = {"issuer": self.issuer, "fetched_at": self.fetched_at, "jwks": json.loads(document)}
        temporary = self._cache_file.with_name(self._cache_file.name + ".tmp")
        try:
            temporary.write_text(json.dumps(record))
            os.replace(temporary, self._cache_file)
        except OSError as error:
            log.warning(
                "cannot keep the JWKS on disk",
                extra={"issuer": self.issuer, "file": str(self._cache_file), "error": error.strerror},
            )

    def _read_cache(self) -> None:
        """The last good JWKS from disk, when the issuer could not be reached at start."""
        if self._cache_file is None:
            return
        try:
            record = json.loads(self._cache_file.read_text())
            fetched_at = float(record["fetched_at"])
            if record["issuer"] != self.issuer:
                raise JwksError(f"it holds the keys of issuer {record['issuer']!r}")
            if time.time() - fetched_at >= self.timing.stale_after:
                raise JwksError(f"its keys are older than stale_after ({self.timing.stale_after} s)")
            keys, skipped = parse_jwks(json.dumps(record["jwks"]).encode(), self._accepted, None)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, JwksError) as error:
            log.warning(
                "the JWKS kept on disk cannot be used",
                extra={"issuer": self.issuer, "file": str(self._cache_file), "error": str(error)},
            )
            return
        log.warning(
            "JWKS read from disk; the issuer cannot be reached",
            extra={"issuer": self.issuer, "file": str(self._cache_file), "fetched_at": fetched_at},
        )
        self._use(keys, fetched_at, skipped)
