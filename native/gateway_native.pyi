"""The gateway's native engine: a gRPC (HTTP/2) server in Rust that forwards every call as bytes to upstream
gRPC servers, asking Python once per call (through ``Server.next_batch``) whether to admit it."""

from typing import final

Metadata = tuple[tuple[str, str | bytes], ...]

Retry = tuple[int, float, float, float]
"""(max_attempts, initial backoff s, max backoff s, backoff multiplier): grpc's retryPolicy. Attempts that
fail UNAVAILABLE before any response header are tried again (at most 5 attempts in all)."""

Method = (
    tuple[str, str, bool, bool, bool, float | None, Retry | None]
    | tuple[str, str, bool, bool, bool, float | None]
)
"""(upstream name, service name, client_streaming, server_streaming, reads_request, default timeout, retry
policy or None); the 6 fields without the retry policy are taken as None. A retry policy applies to
unary-unary methods only (ignored on the others)."""

Upstream = tuple[list[str], tuple[bytes | None, bytes | None, bytes | None, str] | None]
"""(addresses "host:port" or "unix:/path", TLS or None: (CA PEM or None, client cert PEM, client key PEM,
server name, "" = the address's host))"""

@final
class Server:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool,
        io_threads: int,
        tls: tuple[bytes, bytes, bytes | None] | None,
        max_concurrent_streams: int,
        max_message_bytes: int,
        max_metadata_bytes: int,
        idle_timeout: float,
        header_timeout: float,
    ) -> None: ...
    def start(self) -> int: ...
    def set_plan(
        self,
        methods: dict[str, Method],
        upstreams: dict[str, Upstream],
        keepalive: tuple[float, float, bool],
        reconnect: tuple[float, float],
    ) -> None: ...
    def next_batch(self, wait: float | None = None) -> list[Arrival | Ending] | None: ...
    def fileno(self) -> int: ...
    def take_batch(self) -> list[Arrival | Ending] | None: ...
    def settle(self, within: float) -> bool:
        """Waits up to ``within`` seconds, the GIL released, until every event queued before the call has
        been taken; whether it was. On any thread but the one that takes the batches."""
    def drain(self) -> None: ...
    def stop(self, grace: float) -> None: ...
    @property
    def active_calls(self) -> int: ...

@final
class Arrival:
    @property
    def method(self) -> str: ...
    @property
    def metadata(self) -> Metadata: ...
    @property
    def peer(self) -> str: ...
    @property
    def first(self) -> bytes | None:
        """The first request message, inflated per the call's grpc-encoding; None when the method does not
        read its request or the call ended before a whole message."""
    @property
    def timeout(self) -> float | None: ...
    def admit(self, token: object, upstream_metadata: Metadata, reply_headers: Metadata) -> None:
        """Forwards the call; ``reply_headers`` go back in the initial metadata, of the upstream's reply or of
        the gateway's own error."""
    def refuse(self, token: object, code: int, message: str, headers: Metadata, trailers: Metadata) -> None:
        """Answers the call without forwarding it: ``headers`` as initial metadata then a trailers frame
        (status, ``trailers``); trailers-only when ``headers`` is empty."""

@final
class Ending:
    @property
    def token(self) -> object: ...
    @property
    def method(self) -> str: ...
    @property
    def code(self) -> int: ...
    @property
    def received(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def ago(self) -> float:
        """Seconds since the call ended, when the event was taken."""
