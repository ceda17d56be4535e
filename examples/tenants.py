"""An example of a step of the user's own: calls must name an allowed tenant.

Placed after ``auth`` by the config (examples/tenants.toml), so it sees only authenticated calls,
and before ``rate_limit``, so a call for an unknown tenant spends no budget::

    [[steps]]
    use = "examples.tenants:RequireTenantHeader"
    after = "auth"
    options = { header = "x-tenant", allowed = ["acme", "globex"] }

The tenant goes on to the upstream as ``x-tenant-id``, so services need not trust the caller's
own header.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from gateway.call.step import Call, Refusal


class RequireTenantHeader:
    """INVALID_ARGUMENT without the tenant header, PERMISSION_DENIED for a tenant not allowed."""

    name = "tenant"

    def __init__(self, header: str = "x-tenant", allowed: Iterable[str] = ()) -> None:
        if not header or header != header.lower():
            raise ValueError(f"header {header!r} must be a lower-case metadata key")
        self._header = header
        self._allowed = frozenset(allowed)
        if not self._allowed or not all(isinstance(tenant, str) and tenant for tenant in self._allowed):
            raise ValueError("allowed must list at least one tenant name")
        self._missing = Refusal(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"missing {header} metadata; send one of: {', '.join(sorted(self._allowed))}",
        )

    def check(self, call: Call) -> Refusal | None:
        tenant = call.header(self._header)
        if tenant is None:
            return self._missing
        if tenant not in self._allowed:
            return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"tenant {tenant!s} may not call this gateway")
        call.forward("x-tenant-id", str(tenant))
        return None
