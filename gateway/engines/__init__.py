"""The engines that carry gRPC calls, by the name the config gives them (``engine = "core"``)."""

from __future__ import annotations

from gateway.engines.base import Engine


def engine_named(name: str) -> type[Engine]:
    """The engine class for a config's ``engine``: its module is imported only when chosen."""
    if name == "aio":
        from gateway.engines.aio.engine import AioEngine

        return AioEngine
    if name == "native":
        from gateway.engines.native.engine import NativeEngine

        return NativeEngine
    from gateway.engines.core.engine import CoreEngine

    return CoreEngine
