"""One call's lifecycle, the same for every door: begin → decision → upstream → end.

A door only translates its protocol: it reads a request into the call's facts (a
:class:`~gateway.call.step.Call`), refuses, forwards and replies. Everything around the decision
is here, once, so that a new door or a new kind of step is written in one place::

    facts = Call(door, method, metadata, peer, request_id, chain.request_type)
    begin(chain, facts)                     # the observer's start; facts.started
    facts.first = ...                       # the (first) request, when chain.reads_request
    verdict = decide(chain, facts)          # inline, unless a check waits:
    if isinstance(verdict, Pending):
        verdict = await verdict             # ...then finished on the event loop
    if verdict is not None:
        ...                                 # refuse: verdict.code, .message, .trailers
    else:
        metadata, timeout = upstream(chain, facts, remaining, default)
        ...                                 # forward with them, and reply
    end(chain, facts, code)                 # exactly once, however the call ended

The functions take the method's chain and the call's facts and keep no state of their own: on the
inline path they add no task, coroutine or closure to what the door makes.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine, Generator
from typing import Any

import grpc

from gateway.call.chain import Deferred, MethodChain
from gateway.call.replies import upstream_timeout
from gateway.call.step import Call, Metadata, Verdict

# What goes upstream with an admitted call: its metadata, and the seconds it may take (None: no limit).
Upstream = tuple[Metadata, float | None]


def begin(chain: MethodChain, facts: Call) -> None:
    """The call has arrived: its observer starts watching it, and ``facts.started`` says when.

    Call it once per call, as soon as its facts exist and before anything can end the call; every
    call begun is ended with :func:`end`.
    """
    facts.started = chain.observer.start()


class Pending:
    """A decision that waits on the event loop: ``await`` it there, once, for the verdict.

    Every door decides on the loop's thread and awaits it there; a door that drops it unawaited
    calls :meth:`close` instead.
    """

    __slots__ = ("rest",)

    def __init__(self, rest: Coroutine[Any, Any, Verdict]) -> None:
        self.rest = rest

    def __await__(self) -> Generator[Any, None, Verdict]:
        return self.rest.__await__()

    def close(self) -> None:
        """Drop the decision unfinished (its checks that wait never run)."""
        self.rest.close()


def decide(chain: MethodChain, facts: Call) -> Verdict | Pending:
    """The chain's verdict on the call: None to forward it, a Refusal to end it.

    Every check runs inline, in order, on the caller's thread, unless one must wait (an ``async def``
    step, or a plain one that answers :class:`~gateway.call.step.Wait` this once): then the rest of
    the chain is a :class:`Pending` the door awaits on the event loop. Steps' failures are already
    refusals (INTERNAL, INVALID_ARGUMENT, UNAVAILABLE for a step out of time): this never raises for them.
    """
    if chain.waits:
        return Pending(chain.decide_waiting(facts))
    try:
        return chain.decide(facts)
    except Deferred as deferred:  # a check must wait this once
        return Pending(deferred.rest)


def upstream_metadata(chain: MethodChain, facts: Call) -> Metadata:
    """The admitted call goes upstream now: ``facts.upstream_started`` says when, and the metadata to
    send with it is the observer's (gateway/call/metadata.py's rules, and a trace's context).

    Call it once, as the call is forwarded; for a door whose data plane sets the deadline itself.
    """
    facts.upstream_started = time.perf_counter()
    return chain.observer.forwarding(facts)


def upstream(chain: MethodChain, facts: Call, remaining: float | None, default: float | None) -> Upstream:
    """What goes upstream with the admitted call, as it is forwarded: its metadata (see
    :func:`upstream_metadata`) and its timeout, the caller's ``remaining`` seconds (None: no deadline)
    or else the ``default`` the door's configuration gives the route."""
    return upstream_metadata(chain, facts), upstream_timeout(remaining, default)


def end(chain: MethodChain, facts: Call, code: grpc.StatusCode, ago: float = 0.0) -> None:
    """The call that :func:`begin` began has ended with ``code``, the status the caller was sent (or
    CANCELLED), ``ago`` seconds ago: its observer reports it (metrics, access log, trace).

    Call it exactly once per call begun, however the call ended (refused, forwarded, failed, the
    caller gone): a door calls it from a ``finally``, or from its data plane's report of the end,
    which may come a while after it (``ago``).
    """
    chain.observer.ended(facts, code, facts.started, ago)
