"""Steps of a user's own for the tests, imported by the gateway processes the tests start."""

from __future__ import annotations

import asyncio

import grpc

from gateway.call.step import Call, Refusal


class Explodes:
    """A step with a bug: every check raises."""

    name = "explodes"

    def check(self, call: Call) -> Refusal | None:
        raise RuntimeError("a bug in the user's step")


class Slow:
    """A step that waits on the network, for longer than its timeout when ``seconds`` says so."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    async def check(self, call: Call) -> Refusal | None:
        await asyncio.sleep(self._seconds)
        call.forward("x-checked-by", "slow")
        return None


class BlockUser:
    """Reads the request: refuses calls about one user."""

    name = "block-user"
    reads_request = True

    def __init__(self, user_id: int) -> None:
        self._user_id = user_id

    def check(self, call: Call) -> Refusal | None:
        message = call.message()
        if message is not None and getattr(message, "user_id", None) == self._user_id:
            return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"user {self._user_id} is blocked")
        return None


class NoCheck:
    """Not a step: it has no check method."""
