"""The client behind a trusted proxy: its address, from the proxy's ``X-Forwarded-For`` or ``Forwarded``.

Only when the connection comes from one of ``trusted_proxies`` are those headers believed: anyone
else could write any address in them, and so pick their own rate-limit budget and lockout window.
Each proxy appends the address it received the call from, so the list is read from the right: the
first address that is not itself a trusted proxy is the client. When every address in it is a
trusted proxy, the left-most is the farthest hop known; an entry that is not an address (``unknown``,
an obfuscated ``Forwarded`` identifier, garbage) ends the search and the call counts as the proxy's
own. ``X-Forwarded-For`` wins over ``Forwarded`` when a call has both.

One setting per process, read on every door's calls (:meth:`gateway.call.step.Call.peer`); the
gateway sets it at start and on each reload. While it is empty a call pays one ``is None`` test.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import unquote

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

X_FORWARDED_FOR = "x-forwarded-for"
FORWARDED = "forwarded"


class TrustedProxies:
    """The networks whose connections may say who the client is."""

    __slots__ = ("_networks",)

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks: tuple[Network, ...] = tuple(ipaddress.ip_network(text) for text in networks)

    def __contains__(self, address: Address) -> bool:
        return any(address in network for network in self._networks)

    def client(self, peer: str, metadata: Iterable[tuple[str, str | bytes]]) -> str:
        """The caller of a call from TCP ``peer`` (grpc's form) with ``metadata``, in grpc's form:
        ``peer`` itself unless ``peer`` is trusted and names a client; ``ipv4:203.0.113.7`` (no
        port) when it does."""
        address = _peer_host(peer)
        if address is None or address not in self:
            return peer
        forwarded_for: list[str] = []
        forwarded: list[str] = []
        for name, value in metadata:
            if name == X_FORWARDED_FOR and isinstance(value, str):
                forwarded_for.append(value)
            elif name == FORWARDED and isinstance(value, str):
                forwarded.append(value)
        if forwarded_for:
            hops = [hop for hop in (text.strip() for text in ",".join(forwarded_for).split(",")) if hop]
        elif forwarded:
            hops = _forwarded_for(",".join(forwarded))
        else:
            return peer
        client = self._rightmost_untrusted(hops)
        return peer if client is None else _grpc_form(client)

    def _rightmost_untrusted(self, hops: Sequence[str]) -> Address | None:
        found: Address | None = None
        for hop in reversed(hops):
            address = _hop_address(hop)
            if address is None:
                return None
            found = address
            if address not in self:
                break
        return found


_trusted: TrustedProxies | None = None


def trust(networks: Sequence[str]) -> None:
    """Believe the forwarding headers of connections from ``networks`` (CIDRs; none: of no one)."""
    global _trusted
    _trusted = TrustedProxies(networks) if networks else None


def trusted() -> TrustedProxies | None:
    return _trusted


def _unmapped(address: Address) -> Address:
    """An IPv4 client of a dual-stack listener (``::ffff:10.0.0.1``) as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse(text: str) -> Address | None:
    try:
        return _unmapped(ipaddress.ip_address(text.partition("%")[0]))
    except ValueError:
        return None


def _peer_host(peer: str) -> Address | None:
    """The address of a peer as grpc writes it (``ipv4:10.0.0.1:5555``, ``ipv6:[::1]:5555``, its
    brackets maybe percent-encoded), or as ``HOST:PORT``; None for a unix socket and the like."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        rest = peer
    return _hop_address(unquote(rest))


def _hop_address(hop: str) -> Address | None:
    """One hop of a forwarding header: ``10.0.0.1``, ``10.0.0.1:80``, ``[2001:db8::1]:80``,
    ``2001:db8::1``; None when it is none of those."""
    if hop.startswith("["):
        return _parse(hop[1:].partition("]")[0])
    if hop.count(":") == 1:
        hop = hop.partition(":")[0]
    return _parse(hop)


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` of each element of a ``Forwarded`` header (RFC 7239), in order; an element
    without one is an unknown hop."""
    hops = []
    for element in value.split(","):
        if not element.strip():
            continue
        hop = "unknown"
        for pair in element.split(";"):
            name, _, text = pair.strip().partition("=")
            if name.lower() == "for":
                hop = text.strip().strip('"')
        hops.append(hop)
    return hops


def _grpc_form(address: Address) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return f"ipv6:[{address}]"
    return f"ipv4:{address}"
