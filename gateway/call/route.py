"""The chain's ``route`` step: a path that no route and no service of the gateway's own takes."""

from __future__ import annotations

import grpc

from gateway.call.step import Call, Refusal
from gateway.routing.table import RouteTable


def unrouted_message(routes: RouteTable, path: str) -> str:
    """Why no route or local service takes a call to ``path`` (its status is UNIMPLEMENTED)."""
    service, _, method = path.lstrip("/").partition("/")
    if service in routes.upstream_of:
        known = ", ".join(sorted(routes.method_names(service)))
        return f"method {method} is not a method of {service} (it has: {known})"
    return f"service {service} is not routed by this gateway"


class RouteCheck:
    """UNIMPLEMENTED, saying why, for a path the gateway does not answer; no cost for one it does."""

    name = "route"

    def __init__(self, routes: RouteTable) -> None:
        self._routes = routes

    def for_method(self, path: str | None) -> RouteCheck | None:
        return self if path is None else None

    def check(self, call: Call) -> Refusal:
        return Refusal(grpc.StatusCode.UNIMPLEMENTED, unrouted_message(self._routes, call.method))
