"""The call chain: the one order of the checks every call meets, whichever door or engine carries it.

    metadata → auth → route → rate_limit        (and the user's steps where the config puts them)

- ``metadata``: refuse text headers grpc could not forward (INVALID_ARGUMENT).
- ``auth``: who is calling (an API key or a JWT), and may they call this method; first of the
  policy steps, so a call without valid credentials never spends rate-limit budget.
- ``route``: refuse a path that no route and no service of the gateway's own takes (UNIMPLEMENTED).
- ``rate_limit``: spend budget of every rule that covers the method (RESOURCE_EXHAUSTED).

The chain is compiled once per method and configuration (a step's ``for_method`` says whether it
checks a method at all), so a call runs only the checks that apply to it. Doors do not call it
directly: gateway/call/lifecycle.py runs ``decide`` (every check inline) or, if ``waits``,
``decide_waiting`` on the event loop, and turns :class:`Deferred` (a plain check that must wait
this once, e.g. for a key its issuer has just published) into a ``Pending`` the door awaits.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from gateway.call.step import BadRequest, Call, Metadata, Refusal, Verdict, Wait

log = logging.getLogger("gateway.chain")

# The gateway's own steps, in the order every call meets them.
BUILT_IN_ORDER = ("metadata", "auth", "route", "rate_limit")

# A failing step logs its traceback once, then a count of its failures at most this often.
FAILURE_LOG_SECONDS = 10.0


class CallObserver(Protocol):
    """Sees each call of one method begin, go upstream and end (metrics, access log, traces)."""

    def start(self) -> float: ...

    def forwarding(self, call: Call) -> Metadata:
        """The metadata to send upstream with ``call``: the lifecycle asks for it as the call is forwarded."""
        ...

    def ended(self, call: Call, code: grpc.StatusCode, started: float, ago: float = 0.0) -> None:
        """The call ended with ``code``, ``ago`` seconds ago."""
        ...


@dataclass(frozen=True)
class Placement:
    """A step and its place: one of the gateway's own, or a user's ``after`` or ``before`` a named step.

    A user's step checks the calls of routed methods only: the gateway's own health and
    reflection, and paths no route knows, are answered without it.
    """

    step: Any
    name: str
    after: str | None = None
    before: str | None = None
    timeout: float | None = None  # for an ``async`` check: seconds before the call is refused
    routed_only: bool = True


class PlacementError(ValueError):
    """A placement names no step; ``index`` is its position among the placements."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def ordered(built_in: Mapping[str, Any], placements: Sequence[Placement]) -> list[Placement]:
    """Every step in chain order: the gateway's own in BUILT_IN_ORDER, each user's where it is placed.

    Several steps ``after`` one step keep the order they are listed in.

    Raises:
        PlacementError: a placement's ``after``/``before`` names no step listed before it, or its
            name is taken.
    """
    chain = [Placement(built_in[name], name, routed_only=False) for name in BUILT_IN_ORDER]
    last_after: dict[str, str] = {}
    for index, placement in enumerate(placements):
        names = [placed.name for placed in chain]
        if placement.name in names:
            raise PlacementError(index, f"a step is already named {placement.name!r}; give it another name")
        anchor = placement.after if placement.after is not None else placement.before
        if anchor not in names:
            raise PlacementError(
                index, f"there is no step named {anchor!r} to go next to (steps: {', '.join(names)})"
            )
        if placement.after is not None:
            position = names.index(last_after.get(anchor, anchor)) + 1
            last_after[anchor] = placement.name
        else:
            position = names.index(anchor)
        chain.insert(position, placement)
    return chain


class _StepFailures:
    """Logs a step's exceptions: the first with its traceback, then how many, at most every 10 s."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._next_log = 0.0
        self._unlogged = 0
        self._traced = False

    def report(self) -> None:
        self._unlogged += 1
        now = time.monotonic()
        if now < self._next_log:
            return
        self._next_log = now + FAILURE_LOG_SECONDS
        if not self._traced:
            self._traced = True
            log.exception("a step failed; its calls are refused with INTERNAL", extra={"step": self.name})
        else:
            log.error("a step keeps failing", extra={"step": self.name, "calls": self._unlogged})
        self._unlogged = 0


@dataclass(frozen=True)
class _Check:
    name: str
    check: Callable[[Call], Any]
    waits: bool  # an ``async def`` check: run on the event loop
    timeout: float | None
    failures: _StepFailures


def _refused_for_failure(check: _Check) -> Refusal:
    check.failures.report()
    return Refusal(grpc.StatusCode.INTERNAL, f"step {check.name} failed")


class MethodChain:
    """The checks of one method (or of every unrouted path), compiled once per configuration.

    ``route`` is the method's route (None: a service of the gateway's own, or unrouted).
    """

    __slots__ = ("_checks", "observer", "reads_request", "request_type", "route", "waits")

    def __init__(self, route: Any, observer: CallObserver, checks: Iterable[_Check], reads: bool) -> None:
        self.route = route
        # What Call.message() decodes the request as (routed methods only).
        self.request_type = None if route is None else route.request_type
        self.observer = observer
        self._checks = tuple(checks)
        self.reads_request = reads
        self.waits = any(check.waits for check in self._checks)

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(check.name for check in self._checks)

    def decide(self, call: Call) -> Verdict:
        """Run every check inline, in order, until one refuses. Only when not ``waits``.

        Raises:
            Deferred: a check answered :class:`~gateway.call.step.Wait`; the door finishes the
                call's chain on the event loop with ``await deferred.rest``.
        """
        for check in self._checks:
            try:
                verdict: Verdict | Wait = check.check(call)
            except BadRequest as error:
                return Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            except Exception:
                return _refused_for_failure(check)
            if verdict is not None:
                if isinstance(verdict, Wait):
                    raise Deferred(self._resume(call, check, verdict))
                return verdict
        return None

    async def decide_waiting(self, call: Call, start: int = 0) -> Verdict:
        """Run every check from ``start`` in order until one refuses, awaiting those that wait (on
        the event loop)."""
        for check in self._checks[start:]:
            try:
                answer = check.check(call)  # a coroutine, if the check waits
            except BadRequest as error:
                return Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            except Exception:
                return _refused_for_failure(check)
            if check.waits:
                verdict: Verdict = await self._awaited(check, answer)
            elif isinstance(answer, Wait):
                verdict = await self._awaited(check, answer.answer)
            else:
                verdict = answer
            if verdict is not None:
                return verdict
        return None

    async def _awaited(self, check: _Check, answer: Awaitable[Verdict]) -> Verdict:
        try:
            if check.timeout is None:
                return await answer
            async with asyncio.timeout(check.timeout):
                return await answer
        except BadRequest as error:
            return Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except TimeoutError:
            return Refusal(
                grpc.StatusCode.UNAVAILABLE, f"step {check.name} did not answer within {check.timeout} s"
            )
        except Exception:
            return _refused_for_failure(check)

    async def _resume(self, call: Call, check: _Check, wait: Wait) -> Verdict:
        verdict = await self._awaited(check, wait.answer)
        if verdict is not None:
            return verdict
        return await self.decide_waiting(call, self._checks.index(check) + 1)


class Deferred(Exception):
    """Raised by :meth:`MethodChain.decide`: the call's chain must finish on the event loop."""

    def __init__(self, rest: Coroutine[Any, Any, Verdict]) -> None:
        super().__init__("the chain waits")
        self.rest = rest


class Chain:
    """The compiled chain of every method the gateway answers, and of every other path."""

    def __init__(
        self,
        steps: Sequence[Placement],
        paths: Mapping[str, Any],
        observers: Mapping[str, CallObserver],
        unrouted_observer: CallObserver,
    ) -> None:
        """``steps`` in order (see :func:`ordered`); ``paths``: every path answered -> its route
        (None for the gateway's own services); ``observers`` by path."""
        self.step_names = tuple(placed.name for placed in steps)
        failures = {placed.name: _StepFailures(placed.name) for placed in steps}
        self.methods = {
            path: self._compile(steps, path, route, observers[path], failures)
            for path, route in paths.items()
        }
        self.unrouted = self._compile(steps, None, None, unrouted_observer, failures)

    @staticmethod
    def _compile(
        steps: Sequence[Placement],
        path: str | None,
        route: Any,
        observer: CallObserver,
        failures: Mapping[str, _StepFailures],
    ) -> MethodChain:
        checks = []
        reads = False
        for placed in steps:
            if placed.routed_only and route is None:
                continue
            specialize = getattr(placed.step, "for_method", None)
            step = placed.step if specialize is None else specialize(path)
            if step is None:
                continue
            reads = reads or bool(getattr(step, "reads_request", False))
            waits = inspect.iscoroutinefunction(step.check)
            checks.append(_Check(placed.name, step.check, waits, placed.timeout, failures[placed.name]))
        return MethodChain(route, observer, checks, reads)

    def of(self, path: str) -> MethodChain:
        """The chain of ``path``: its method's, or the unrouted one."""
        return self.methods.get(path) or self.unrouted
