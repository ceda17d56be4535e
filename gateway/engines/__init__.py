"""The engines that carry gRPC calls, by the name the config gives them (``engine = "native"``)."""

from __future__ import annotations

from gateway.engines.base import Engine


def engine_named(name: str) -> type[Engine]:
    """The engine class for a config's ``engine``: its module is imported only when chosen."""
    if name == "aio":
        from gateway.engines.aio.engine import AioEngine

        return AioEngine
    from gateway.engines.native.engine import NativeEngine

    return NativeEngine
