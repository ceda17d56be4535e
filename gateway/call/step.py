"""The step interface: what a check of the call chain sees, and what it may answer. Public.

A step is an object with a ``name`` and one method, ``check(call)``, that returns ``None`` to let
the call go on or a :class:`Refusal` to end it with a gRPC status. Written ``def``, it runs inline
on the door's own thread and must not block; written ``async def``, it runs on the event loop,
bounded by its ``timeout`` (see ``[[steps]]`` in the config). A step that needs the call's
(first) request message sets ``reads_request = True`` and reads ``call.message()``.

The gateway's own checks are steps too (``gateway/call/chain.py`` lists their order); a user's
step is placed among them by the config::

    [[steps]]
    use = "examples.tenants:RequireTenantHeader"
    after = "auth"
    options = { header = "x-tenant", allowed = ["acme", "globex"] }

``options`` become the constructor's keyword arguments; a constructor that raises ``TypeError``
or ``ValueError`` is a config error naming the table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError, Message

from gateway.call import forwarded

Metadata = tuple[tuple[str, str | bytes], ...]


class BadRequest(Exception):
    """The request message could not be decoded as the method's input type."""


class Call:
    """The facts of one call, the same whichever door it came through.

    Set by the door: ``door`` (``"grpc"``), ``method`` (``/package.Service/Method``), ``metadata``
    (as the caller sent it), ``request_id``, and the (first) request when some step reads it.
    Set by the gateway's steps on the way: ``client`` (after ``auth``), ``reply_headers``
    (``x-ratelimit-*``, after ``rate_limit``). A step may add metadata for the upstream with
    :meth:`forward`; everything else is read-only to it.
    """

    __slots__ = (
        "_client_peer",
        "_message",
        "_peer",
        "_request_type",
        "auth_failure",
        "claims",
        "client",
        "door",
        "first",
        "limited_by",
        "metadata",
        "method",
        "rate_limit",
        "received",
        "reply_headers",
        "request_id",
        "sent",
        "started",
        "to_upstream",
        "trace",
        "upstream_started",
        "withheld",
    )

    def __init__(
        self,
        door: str,
        method: str,
        metadata: Metadata,
        peer: Callable[[], str],
        request_id: str,
        request_type: type[Message] | None = None,
    ) -> None:
        self.door = door
        self.method = method
        self.metadata = metadata
        self._peer = peer
        self._client_peer: str | None = None  # the peer behind a trusted proxy, once looked up
        self.request_id = request_id
        self._request_type = request_type
        self.first: bytes | None = None  # the raw (first) request, when a step reads it
        self._message: Message | None = None
        self.client: str | None = None
        # Set by ``auth`` when a token authenticated the call: its verified claims (read-only), and
        # the metadata that carried it, which is not forwarded.
        self.claims: Mapping[str, Any] | None = None
        self.withheld: tuple[str, ...] = ()
        self.reply_headers: Metadata = ()
        self.to_upstream: Metadata = ()
        # What the observers report at the call's end (metrics, access log).
        self.auth_failure: str | None = None  # the reason label of an auth refusal
        self.rate_limit: str | None = None  # "allowed", "refused", "store_error"; None: not limited
        self.limited_by: str | None = None  # the rule that refused the call
        # Streamed messages counted by the door (a unary side's one message is not counted).
        self.received = 0
        self.sent = 0
        self.started = 0.0  # perf_counter() as the call arrived (its observer's start())
        self.upstream_started = 0.0  # perf_counter() as the call went upstream; 0: it did not
        self.trace: Any = None  # the call's spans, while tracing is on

    def peer(self) -> str:
        """The caller's address as grpc writes it (``ipv4:127.0.0.1:5555``); looked up only when asked.

        From a trusted proxy (``trusted_proxies``), the client it names in ``x-forwarded-for`` or
        ``forwarded`` metadata instead (``ipv4:203.0.113.7``): see gateway/call/forwarded.py.
        """
        proxies = forwarded.trusted()
        if proxies is None:
            return self._peer()
        if self._client_peer is None:
            self._client_peer = proxies.client(self._peer(), self.metadata)
        return self._client_peer

    def header(self, name: str) -> str | bytes | None:
        """The first value of metadata ``name`` (lower case), or None."""
        for key, value in self.metadata:
            if key == name:
                return value
        return None

    def message(self) -> Message | None:
        """The (first) request decoded with the method's input type, once; None if the caller sent none.

        Only for steps that set ``reads_request``, on a routed method.

        Raises:
            BadRequest: the bytes are not a valid message of the method's input type.
        """
        if self._message is None and self.first is not None and self._request_type is not None:
            try:
                self._message = self._request_type.FromString(self.first)
            except DecodeError:
                expected = self._request_type.DESCRIPTOR.full_name
                raise BadRequest(f"the request is not a valid {expected} message") from None
        return self._message

    def forward(self, name: str, value: str) -> None:
        """Send metadata ``name: value`` to the upstream with this call (after the caller's own).

        Raises:
            ValueError: ``name`` is not a lower-case metadata key, or ``value`` not printable ASCII.
        """
        if not name or name != name.lower() or name.startswith((":", "grpc-")) or name.endswith("-bin"):
            raise ValueError(f"{name!r} is not a metadata key a step may add (lower case, no grpc- or -bin)")
        if not (value.isascii() and value.isprintable()):
            raise ValueError(f"the value of {name} must be printable ASCII")
        self.to_upstream = (*self.to_upstream, (name, value))


class Refusal:
    """The end of a call by the gateway: its status, message, and trailing metadata.

    ``trailers`` may hold ``grpc-status-details-bin`` (a serialized ``google.rpc.Status``) and
    headers such as ``retry-after``. The message reaches the caller: say what to do, never a secret.
    """

    __slots__ = ("code", "message", "trailers")

    def __init__(self, code: grpc.StatusCode, message: str, trailers: Metadata = ()) -> None:
        self.code = code
        self.message = message
        self.trailers = trailers

    def __repr__(self) -> str:
        return f"Refusal({self.code.name}, {self.message!r})"


Verdict = Refusal | None


class Wait:
    """A plain ``def`` check's answer when, this once, it cannot answer without waiting (a token
    names a key its issuer has just published): the chain goes on on the event loop, where
    ``answer`` is awaited as the check's verdict. For the rare case; a check that often waits is
    written ``async def``.
    """

    __slots__ = ("answer",)

    def __init__(self, answer: Awaitable[Verdict]) -> None:
        self.answer = answer


class Step(Protocol):
    """One check of the chain: ``check`` may be ``def`` (inline) or ``async def`` (event loop).

    Optional attributes, read once when the chain is built:

    - ``name``: how the config, the logs and ``INTERNAL "step NAME failed"`` call it (default: the
      class name).
    - ``reads_request = True``: the door reads the (first) request before the chain runs, so
      ``call.message()`` has it.
    - ``for_method(path) -> step | None``: the step that checks the calls of ``path``, or None to
      leave them alone; ``path`` None stands for every path no route knows.
    """

    def check(self, call: Call) -> Verdict | Awaitable[Verdict]: ...


def step_name(step: Any) -> str:
    """A step's name: its ``name`` attribute, or its class name."""
    name = getattr(step, "name", None)
    return name if isinstance(name, str) and name else type(step).__name__
