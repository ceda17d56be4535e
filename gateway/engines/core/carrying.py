"""The core engine's side of a plan: how each path's calls are carried, built once per plan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.call.chain import Chain, MethodChain
from gateway.engines.core.channel import UpstreamChannel
from gateway.routing.table import MethodRoute


@dataclass(frozen=True)
class Method:
    """How the calls of one path are carried: where to, of which kind, through which checks."""

    path: bytes
    channel: UpstreamChannel
    route: MethodRoute | None  # None: one of the gateway's own methods (health, reflection)
    client_streaming: bool
    server_streaming: bool
    chain: MethodChain


@dataclass(frozen=True)
class Carrying:
    """The core engine's side of a plan: each path's method, and the loop that runs waiting steps."""

    methods: dict[str, Method]
    chain: Chain
    loop: asyncio.AbstractEventLoop
    channels: tuple[UpstreamChannel, ...]

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
