"""TLS on the listener, client certificates (mTLS), TLS and mTLS to upstreams, and bad certificate files."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from shop.users.v1 import users_pb2_grpc

from runtime.introspection import add_health
from tests.gateway.certs import Certificates, Pair, make_certificates
from tests.gateway.configs import USERS, gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.security_support import gateway_beside, gateway_process, get_user, run_cli, run_main
from tests.gateway.upstream_double import ECHO, ControlledUsers, Recorder


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _client_credentials(certs: Certificates, pair: Pair | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=None if pair is None else pair.key.read_bytes(),
        certificate_chain=None if pair is None else pair.cert.read_bytes(),
    )


def _server_tls(certs: Certificates, client_ca: bool) -> str:
    # Relative file names: taken from the config's folder, which is the certificates' folder here.
    text = f'\n[tls]\ncert = "{certs.server.cert.name}"\nkey = "{certs.server.key.name}"\n'
    return text + (f'client_ca = "{certs.ca.name}"\n' if client_ca else "")


async def test_tls_listener_refuses_plaintext(services: Services, certs: Certificates) -> None:
    config = write_config(
        certs.ca.parent, gateway_toml(services.routes) + _server_tls(certs, False), "tls.toml"
    )
    trusted = _client_credentials(certs)
    with gateway_process(config, credentials=trusted) as gateway:
        assert (await get_user(gateway.address, credentials=trusted)).code == grpc.StatusCode.OK
        assert (await get_user(gateway.address)).code == grpc.StatusCode.UNAVAILABLE  # plaintext
        # A client that does not trust the gateway's CA (the system's CAs only) does not get through.
        untrusting = grpc.ssl_channel_credentials()
        assert (await get_user(gateway.address, credentials=untrusting)).code == grpc.StatusCode.UNAVAILABLE


async def test_mtls_listener_needs_a_client_certificate_from_its_ca(
    services: Services, certs: Certificates
) -> None:
    config = write_config(
        certs.ca.parent, gateway_toml(services.routes) + _server_tls(certs, True), "mtls.toml"
    )
    with_cert = _client_credentials(certs, certs.client)
    with gateway_process(config, credentials=with_cert) as gateway:
        assert (await get_user(gateway.address, credentials=with_cert)).code == grpc.StatusCode.OK
        no_cert = _client_credentials(certs)
        assert (await get_user(gateway.address, credentials=no_cert)).code == grpc.StatusCode.UNAVAILABLE
        stranger = _client_credentials(certs, certs.stranger)
        assert (await get_user(gateway.address, credentials=stranger)).code == grpc.StatusCode.UNAVAILABLE
        assert (await get_user(gateway.address)).code == grpc.StatusCode.UNAVAILABLE


@contextlib.asynccontextmanager
async def _tls_upstream(certs: Certificates, recorder: Recorder, client_ca: bool) -> AsyncIterator[int]:
    """A UserService that speaks only TLS (and wants a client certificate with ``client_ca``)."""
    server = grpc.aio.server()
    users_pb2_grpc.add_UserServiceServicer_to_server(ControlledUsers(recorder), server)
    await add_health(server).set("", 1)
    credentials = grpc.ssl_server_credentials(
        [(certs.server.key.read_bytes(), certs.server.cert.read_bytes())],
        root_certificates=certs.ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


def _route_tls(certs: Certificates, ca: bool, client_cert: bool = False, server_name: str = "") -> str:
    lines = ["[routes.tls]"]
    if ca:
        lines.append(f'ca = "{certs.ca}"')
    if client_cert:
        lines += [f'cert = "{certs.client.cert}"', f'key = "{certs.client.key}"']
    if server_name:
        lines.append(f'server_name = "{server_name}"')
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("upstream_wants_cert", "route_tls", "reached"),
    [
        (False, {"ca": True}, True),
        (False, None, False),  # plaintext to a TLS upstream
        (False, {"ca": False}, False),  # the system's CAs do not know the test CA
        (False, {"ca": True, "server_name": "localhost"}, True),  # a name the certificate carries
        (False, {"ca": True, "server_name": "users.example"}, False),  # one it does not
        (True, {"ca": True, "client_cert": True}, True),
        (True, {"ca": True}, False),  # mTLS upstream, gateway without a certificate
    ],
    ids=[
        "tls",
        "plaintext to tls",
        "tls with system CAs",
        "tls with server_name",
        "tls with a wrong server_name",
        "mtls",
        "mtls without certificate",
    ],
)
async def test_gateway_reaches_a_tls_upstream(
    certs: Certificates,
    tmp_path: Path,
    upstream_wants_cert: bool,
    route_tls: dict[str, Any] | None,
    reached: bool,
) -> None:
    recorder = Recorder()
    async with _tls_upstream(certs, recorder, upstream_wants_cert) as port:
        text = gateway_toml({USERS: f"127.0.0.1:{port}"}, rules="")
        if route_tls is not None:
            text += _route_tls(certs, **route_tls)
        async with gateway_beside(write_config(tmp_path, text)) as gateway:
            result = await get_user(gateway.address, user_id=ECHO)
    if reached:
        assert result.code == grpc.StatusCode.OK, result
        assert result.initial["x-upstream-header"] == "hello"
        assert recorder.metadata[-1]["x-client-id"] == "demo"
    else:
        assert result.code == grpc.StatusCode.UNAVAILABLE
        assert f"127.0.0.1:{port}" in result.details  # the upstream that could not be reached
        assert recorder.metadata == []


def _encrypted_copy(key: Path) -> Path:
    private_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    path = key.with_name("encrypted.key")
    path.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return path


def _tls_errors(certs: Certificates, folder: Path) -> dict[str, tuple[str, str]]:
    garbage = folder / "garbage.pem"
    garbage.write_text("not a certificate\n")
    server, client = certs.server, certs.client
    encrypted = _encrypted_copy(server.key)
    return {
        "missing cert file": (
            f'[tls]\ncert = "{folder}/absent.crt"\nkey = "{server.key}"\n',
            f"tls.cert: cannot read {folder}/absent.crt (No such file or directory)",
        ),
        "cert is a folder": (
            f'[tls]\ncert = "{folder}"\nkey = "{server.key}"\n',
            f"tls.cert: cannot read {folder} (Is a directory)",
        ),
        "cert not PEM": (
            f'[tls]\ncert = "{garbage}"\nkey = "{server.key}"\n',
            f"tls.cert: {garbage} holds no PEM certificate",
        ),
        "key of another certificate": (
            f'[tls]\ncert = "{server.cert}"\nkey = "{client.key}"\n',
            f"tls.key: {client.key} is not the private key of the certificate in {server.cert}",
        ),
        "key not PEM": (
            f'[tls]\ncert = "{server.cert}"\nkey = "{garbage}"\n',
            f"tls.key: {garbage} holds no PEM private key",
        ),
        "encrypted key": (
            f'[tls]\ncert = "{server.cert}"\nkey = "{encrypted}"\n',
            f"tls.key: {encrypted} is encrypted; give the key unencrypted",
        ),
        "client CA not PEM": (
            f'[tls]\ncert = "{server.cert}"\nkey = "{server.key}"\nclient_ca = "{garbage}"\n',
            f"tls.client_ca: {garbage} holds no PEM certificate",
        ),
        "listener key missing": (f'[tls]\ncert = "{server.cert}"\n', "tls.key: required field is missing"),
        "upstream CA missing": (
            f'[routes.tls]\nca = "{folder}/absent-ca.pem"\n',
            f"routes[0].tls.ca: cannot read {folder}/absent-ca.pem (No such file or directory)",
        ),
        "upstream certificate without key": (
            f'[routes.tls]\ncert = "{client.cert}"\n',
            "routes[0].tls: give both cert and key (the gateway's client certificate), or neither",
        ),
        "upstream key of another certificate": (
            f'[routes.tls]\ncert = "{client.cert}"\nkey = "{server.key}"\n',
            f"routes[0].tls.key: {server.key} is not the private key of the certificate in {client.cert}",
        ),
    }


TLS_ERROR_CASES = [
    "missing cert file",
    "cert is a folder",
    "cert not PEM",
    "key of another certificate",
    "key not PEM",
    "encrypted key",
    "client CA not PEM",
    "listener key missing",
    "upstream CA missing",
    "upstream certificate without key",
    "upstream key of another certificate",
]


@pytest.mark.parametrize("case", TLS_ERROR_CASES)
def test_bad_tls_files_are_config_errors_naming_the_file(
    case: str, certs: Certificates, tmp_path: Path
) -> None:
    tail, expected = _tls_errors(certs, tmp_path)[case]
    config = write_config(tmp_path, gateway_toml({USERS: "127.0.0.1:50051"}, rules="") + tail)
    code, stderr = run_main("--config", str(config), "--listen", "127.0.0.1:0")
    assert code == 2, stderr
    [line] = stderr.splitlines()
    assert line.startswith(f"grpc-gateway: error: config {config}: ")
    assert expected in line


def test_a_mismatched_key_stops_the_real_process_with_exit_2(certs: Certificates, tmp_path: Path) -> None:
    tail = f'[tls]\ncert = "{certs.server.cert}"\nkey = "{certs.client.key}"\n'
    config = write_config(tmp_path, gateway_toml({USERS: "127.0.0.1:50051"}, rules="") + tail)
    result = run_cli("--config", str(config), "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr == (
        f"grpc-gateway: error: config {config}: tls.key: {certs.client.key} is not the private key of "
        f"the certificate in {certs.server.cert}\n"
    )
