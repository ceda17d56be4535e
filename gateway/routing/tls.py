"""TLS material: read and checked at start-up, turned into gRPC credentials for the listener and upstreams.

Every file is read once, before anything listens. A file that cannot be read, holds no PEM
certificate, or a key that does not belong to its certificate is a config error naming the
file: gRPC itself would only fail at the first handshake, with a message about neither.
The checks use the standard library's ``ssl`` (OpenSSL), which gRPC's own TLS agrees with.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gateway.config.schema import ConfigError, Route, ServerTls, UpstreamTls

ChannelOptions = tuple[tuple[str, str | int], ...]


@dataclass(frozen=True)
class UpstreamTransport:
    """How to open the channel to one upstream over TLS."""

    credentials: grpc.ChannelCredentials
    options: ChannelOptions = ()
    # The settings it was made from: two routes to one address must agree on them.
    settings: UpstreamTls | None = None


class _EncryptedKey(Exception):
    pass


def _ask_passphrase() -> str:
    raise _EncryptedKey


def _read(path: Path, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{field}: cannot read {path} ({error.strerror})") from None


def _certificates(path: Path, field: str) -> bytes:
    """The PEM certificates in ``path`` (a certificate chain or a CA bundle)."""
    data = _read(path, field)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=data.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError):
        raise ConfigError(f"{field}: {path} holds no PEM certificate") from None
    return data


def _key_pair(cert: Path, key: Path, field: str) -> tuple[bytes, bytes]:
    """The PEM private key in ``key`` and the certificate chain in ``cert``, checked to belong together."""
    chain = _certificates(cert, f"{field}.cert")
    private_key = _read(key, f"{field}.key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_ask_passphrase)
    except _EncryptedKey:
        raise ConfigError(
            f"{field}.key: {key} is encrypted; give the key unencrypted (gRPC cannot ask for a passphrase) "
            "and protect the file instead"
        ) from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{field}.key: {key} is not the private key of the certificate in {cert}"
            ) from None
        raise ConfigError(f"{field}.key: {key} holds no PEM private key") from None
    except OSError as error:
        raise ConfigError(f"{field}.key: cannot read {key} ({error.strerror})") from None
    return private_key, chain


def server_credentials(tls: ServerTls | None) -> grpc.ServerCredentials | None:
    """Credentials for the listener (None: plaintext); with ``client_ca``, clients need a certificate."""
    if tls is None:
        return None
    private_key, chain = _key_pair(tls.cert, tls.key, "tls")
    client_ca = None if tls.client_ca is None else _certificates(tls.client_ca, "tls.client_ca")
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _upstream_transport(tls: UpstreamTls, field: str) -> UpstreamTransport:
    ca = None if tls.ca is None else _certificates(tls.ca, f"{field}.ca")
    private_key = chain = None
    if tls.cert is not None and tls.key is not None:
        private_key, chain = _key_pair(tls.cert, tls.key, field)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=private_key, certificate_chain=chain
    )
    options: ChannelOptions = (("grpc.ssl_target_name_override", tls.server_name),) if tls.server_name else ()
    return UpstreamTransport(credentials, options, tls)


def upstream_transports(routes: Sequence[Route]) -> dict[str, UpstreamTransport]:
    """TLS transports by upstream address, for the routes that ask for TLS.

    One address is one channel, so routes sharing an upstream must ask for the same TLS settings.
    """
    transports: dict[str, UpstreamTransport] = {}
    plaintext: dict[str, int] = {}
    field_of: dict[str, str] = {}
    for index, route in enumerate(routes):
        field = f"routes[{index}].tls"
        if route.tls is None:
            plaintext.setdefault(route.upstream, index)
        elif route.upstream in transports:
            if transports[route.upstream].settings != route.tls:
                raise ConfigError(
                    f"{field}: differs from {field_of[route.upstream]} for the same upstream "
                    f"{route.upstream}; "
                    "routes to one upstream share one connection, so give them the same tls settings"
                )
        else:
            transports[route.upstream] = _upstream_transport(route.tls, field)
            field_of[route.upstream] = field
    for address, index in plaintext.items():
        if address in transports:
            raise ConfigError(
                f"routes[{index}].tls: missing, but {field_of[address]} reaches the same upstream {address} "
                "over TLS; routes to one upstream share one connection, so give them the same tls settings"
            )
    return transports


def open_channel(
    address: str,
    transport: UpstreamTransport | None,
    options: Iterable[tuple[str, str | int]] = (),
    blocking: bool = False,
) -> Any:
    """A channel to ``address``: over TLS when ``transport`` says so, else plaintext; a grpc.aio
    channel, or with ``blocking`` one of grpc's blocking API."""
    api: Any = grpc if blocking else grpc.aio
    if transport is None:
        return api.insecure_channel(address, options=list(options) or None)
    return api.secure_channel(address, transport.credentials, options=[*options, *transport.options] or None)


# The same checked files as PEM bytes, for the native data plane (rustls takes PEM, not grpc's objects).
ServerPems = tuple[bytes, bytes, bytes | None]  # certificate chain, private key, client CA (None: no mTLS)
UpstreamPems = tuple[bytes | None, bytes | None, bytes | None, str]  # CA, client chain, client key, name


def server_pems(tls: ServerTls | None) -> ServerPems | None:
    """The listener's certificate chain, key and client CA (None: plaintext)."""
    if tls is None:
        return None
    private_key, chain = _key_pair(tls.cert, tls.key, "tls")
    client_ca = None if tls.client_ca is None else _certificates(tls.client_ca, "tls.client_ca")
    return chain, private_key, client_ca


def upstream_pems(tls: UpstreamTls, field: str) -> UpstreamPems:
    """The CA to trust (None: the system's), the gateway's client chain and key, and the server name."""
    ca = None if tls.ca is None else _certificates(tls.ca, f"{field}.ca")
    private_key = chain = None
    if tls.cert is not None and tls.key is not None:
        private_key, chain = _key_pair(tls.cert, tls.key, field)
    return ca, chain, private_key, tls.server_name
