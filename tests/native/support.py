"""What the tests of the native engine's server share: in-test upstreams, a plan that routes to them and to
the real user and recommendation services, and a started gateway_native.Server with a Python thread that
decides on its calls."""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import gateway_native
import grpc

from tests.support.processes import free_port

KEY = (("x-api-key", "secret-key"),)
USERS = "shop.users.v1.UserService"
RECOMMENDATIONS = "shop.recommendations.v1.RecommendationService"
SLOW_SECONDS = 3.0
# The retry policy of /test.Echo/Flaky: (max_attempts, initial backoff, max backoff, multiplier).
FLAKY_RETRY = (3, 0.01, 0.1, 2.0)

Decide = Callable[[gateway_native.Arrival], None]
# What an in-test upstream saw of a call: (method, metadata, seconds left of its deadline or None).
Record = tuple[str, tuple[tuple[str, str | bytes], ...], float | None]


class Attempts:
    """The attempts of Flaky calls, per x-attempt-key, counted across the in-test upstreams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def next(self, key: str) -> int:
        with self._lock:
            self._counts[key] += 1
            return self._counts[key]

    def __getitem__(self, key: str) -> int:
        with self._lock:
            return self._counts[key]


@dataclass(frozen=True)
class Upstreams:
    users: int
    recommendations: int
    test: int
    # A second in-test upstream: /test.Echo/Flaky* go to both, round-robin.
    test_b: int
    seen: queue.Queue[Record]
    attempts: Attempts

    def drain_seen(self) -> list[Record]:
        """What the in-test upstreams saw since the last look."""
        records = []
        while not self.seen.empty():
            records.append(self.seen.get_nowait())
        return records


def echo_upstream(
    seen: queue.Queue[Record], name: str = "a", attempts: Attempts | None = None
) -> grpc.Server:
    """test.Echo: Echo and Blind answer their request's bytes (Echo with trailers); Sleep and SlowDefault
    sleep first; Fail answers NOT_FOUND with -bin trailers; Flaky and FlakyOnce fail UNAVAILABLE (with the
    caller's x-pushback as grpc-retry-pushback-ms) the first x-fail attempts of their x-attempt-key."""
    attempts = attempts or Attempts()

    def record(method: str, context: grpc.ServicerContext) -> None:
        metadata = tuple((item.key, item.value) for item in context.invocation_metadata())
        seen.put((method, metadata, context.time_remaining()))

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        record("Echo", context)
        context.set_trailing_metadata((("echo-trailer-bin", b"\x00\xff\x01"), ("echo-trailer", "yes")))
        return request

    def blind(request: bytes, context: grpc.ServicerContext) -> bytes:
        record("Blind", context)
        return request

    def sleep(request: bytes, context: grpc.ServicerContext) -> bytes:
        record("Sleep", context)
        time.sleep(SLOW_SECONDS)
        return request

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        record("Fail", context)
        context.set_trailing_metadata(
            (
                ("fail-detail-bin", b"\x00\xff\x01"),
                ("grpc-status-details-bin", b"\x08\x05\x12\x02no"),
                ("fail-note", "as sent"),
            )
        )
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: 100% gone")
        return request  # not reached: abort raises

    def flaky(request: bytes, context: grpc.ServicerContext) -> bytes:
        record(f"Flaky@{name}", context)
        metadata = {item.key: item.value for item in context.invocation_metadata()}
        attempt = attempts.next(str(metadata.get("x-attempt-key", "")))
        if attempt <= int(str(metadata.get("x-fail", "0"))):
            pushback = metadata.get("x-pushback")
            if pushback is not None:
                context.set_trailing_metadata((("grpc-retry-pushback-ms", str(pushback)),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Blind": grpc.unary_unary_rpc_method_handler(blind),
            "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
            "SlowDefault": grpc.unary_unary_rpc_method_handler(sleep),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
            "FlakyOnce": grpc.unary_unary_rpc_method_handler(flaky),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    return server


@dataclass(frozen=True)
class Seen:
    """What an Arrival carried."""

    method: str
    metadata: tuple[tuple[str, str | bytes], ...]
    peer: str
    first: bytes | None
    timeout: float | None


def admit_or_refuse(arrival: gateway_native.Arrival) -> None:
    """Admits calls with the right key (adding metadata), refuses the others UNAUTHENTICATED."""
    key = next((value for name, value in arrival.metadata if name == "x-api-key"), None)
    if key != "secret-key":
        arrival.refuse("refused", 16, "invalid API key", (), (("retry-after", "7"),))
        return
    arrival.admit(
        f"token {arrival.method}",
        (*arrival.metadata, ("x-gateway-client", "tester"), ("x-client-bin", b"\x01\x02")),
        (("x-gateway", "native"),),
    )


@dataclass
class Gateway:
    """A started gateway_native.Server and the thread that decides on its calls."""

    server: gateway_native.Server
    port: int
    decide: Decide
    arrivals: list[Seen] = field(default_factory=list)
    endings: queue.Queue[gateway_native.Ending] = field(default_factory=queue.Queue)
    errors: list[BaseException] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self) -> None:
        """The decider thread: until the server has stopped. Keeps no reference to an Arrival."""
        while (batch := self.server.next_batch()) is not None:
            batch.reverse()
            while batch:
                self._handle(batch.pop())

    def _handle(self, event: gateway_native.Arrival | gateway_native.Ending) -> None:
        if isinstance(event, gateway_native.Ending):
            self.endings.put(event)
            return
        self.arrivals.append(Seen(event.method, event.metadata, event.peer, event.first, event.timeout))
        try:
            self.decide(event)
        except Exception as error:  # the test fails on it, after the call
            self.errors.append(error)

    def ending(self, timeout: float = 5.0) -> gateway_native.Ending:
        return self.endings.get(timeout=timeout)


def small_server(port: int = 0) -> gateway_native.Server:
    """A server not started yet, on ``port`` of 127.0.0.1: one I/O thread, small limits, no TLS."""
    return gateway_native.Server(
        "127.0.0.1",
        port,
        reuse_port=False,
        io_threads=1,
        tls=None,
        max_concurrent_streams=10,
        max_message_bytes=1024,
        max_metadata_bytes=8192,
        idle_timeout=0.0,
        header_timeout=0.0,
    )


def plan(
    upstreams: Upstreams, down_port: int
) -> tuple[dict[str, gateway_native.Method], dict[str, gateway_native.Upstream]]:
    methods: dict[str, gateway_native.Method] = {
        f"/{USERS}/GetUser": ("users", USERS, False, False, True, None),
        f"/{USERS}/ListUsers": ("users", USERS, False, True, True, None),
        f"/{RECOMMENDATIONS}/GetRecommendations": (
            "recommendations",
            RECOMMENDATIONS,
            False,
            False,
            True,
            None,
        ),
        f"/{RECOMMENDATIONS}/RecommendForGroup": (
            "recommendations",
            RECOMMENDATIONS,
            True,
            False,
            True,
            None,
        ),
        f"/{RECOMMENDATIONS}/StreamRecommendations": (
            "recommendations",
            RECOMMENDATIONS,
            True,
            True,
            False,
            None,
        ),
        "/test.Echo/Echo": ("test", "test.Echo", False, False, True, None),
        "/test.Echo/Blind": ("test", "test.Echo", False, False, False, None),
        "/test.Echo/Sleep": ("test", "test.Echo", False, False, False, None),
        "/test.Echo/SlowDefault": ("test", "test.Echo", False, False, False, 0.3),
        "/test.Echo/Fail": ("test", "test.Echo", False, False, False, None),
        "/test.Echo/Flaky": ("flaky", "test.Echo", False, False, False, None, FLAKY_RETRY),
        "/test.Echo/FlakyOnce": ("flaky", "test.Echo", False, False, False, None, None),
        "/test.Down/Call": ("down", "test.Down", False, False, False, None),
    }
    targets: dict[str, gateway_native.Upstream] = {
        "users": ([f"127.0.0.1:{upstreams.users}"], None),
        "recommendations": ([f"127.0.0.1:{upstreams.recommendations}"], None),
        "test": ([f"127.0.0.1:{upstreams.test}"], None),
        "flaky": ([f"127.0.0.1:{upstreams.test}", f"127.0.0.1:{upstreams.test_b}"], None),
        "down": ([f"127.0.0.1:{down_port}"], None),
    }
    return methods, targets


@contextmanager
def started(
    upstreams: Upstreams,
    decide: Decide = admit_or_refuse,
    *,
    max_message_bytes: int = 4 << 20,
    max_metadata_bytes: int = 16 << 10,
    tls: tuple[bytes, bytes, bytes | None] | None = None,
    idle_timeout: float = 30.0,
    header_timeout: float = 10.0,
    max_concurrent_streams: int = 100,
    more_methods: dict[str, gateway_native.Method] | None = None,
    more_upstreams: dict[str, gateway_native.Upstream] | None = None,
) -> Iterator[Gateway]:
    server = gateway_native.Server(
        "127.0.0.1",
        0,
        reuse_port=False,
        io_threads=2,
        tls=tls,
        max_concurrent_streams=max_concurrent_streams,
        max_message_bytes=max_message_bytes,
        max_metadata_bytes=max_metadata_bytes,
        idle_timeout=idle_timeout,
        header_timeout=header_timeout,
    )
    methods, targets = plan(upstreams, free_port())
    methods.update(more_methods or {})
    targets.update(more_upstreams or {})
    server.set_plan(methods, targets, (0.0, 20.0, False), (0.05, 0.5))
    gateway = Gateway(server, server.start(), decide)
    thread = threading.Thread(target=gateway.run, name="decider", daemon=True)
    thread.start()
    try:
        yield gateway
    finally:
        server.stop(1.0)
        thread.join(5)
        assert not thread.is_alive()
    assert not gateway.errors, gateway.errors


def as_dict(call_metadata: grpc.aio.Metadata | None) -> dict[str, str | bytes]:
    """A call's metadata as a dict (the last value of each key)."""
    return dict(call_metadata or ())
