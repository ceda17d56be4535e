"""Keys at rest: digests, environment variables and key files; `hash-key`; no key in logs or errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import grpc
import pytest

from gateway.config.keys import written_digest
from tests.gateway.configs import API_KEY, USERS, gateway_toml, write_config
from tests.gateway.security_support import gateway_beside, get_user, run_cli, run_main
from tests.gateway.upstream_double import ECHO, Recorder, start_upstream
from tests.support.processes import stderr_text

DIGEST_KEY = "hashed-key-4f1c"
ENV_KEY = "env-key-77aa"
FILE_KEY = "file-key-0b3e"
ENV_NAME = "GATEWAY_TEST_CLIENT_KEY"


def test_hash_key_prints_the_digest_of_stdin_or_an_argument() -> None:
    expected = "sha256:" + hashlib.sha256(b"secret-key").hexdigest()
    from_stdin = run_cli("hash-key", stdin="secret-key\n")
    assert (from_stdin.returncode, from_stdin.stdout, from_stdin.stderr) == (0, expected + "\n", "")
    from_argument = run_cli("hash-key", "secret-key")
    assert (from_argument.returncode, from_argument.stdout) == (0, expected + "\n")


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "the key is empty"),
        ("first-key\nsecond-key\n", "standard input holds more than one line; give one key"),
        ("clé-secrète\n", "a key must be printable ASCII"),
        (" padded-key\n", "a key must not begin or end with a space"),
    ],
    ids=["empty", "two lines", "non-ASCII", "spaces"],
)
def test_hash_key_refuses_an_unusable_key_without_echoing_it(stdin: str, message: str) -> None:
    result = run_cli("hash-key", stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"grpc-gateway hash-key: error: {message}" in result.stderr
    for word in stdin.split():
        assert word not in result.stderr


async def test_digest_env_and_file_keys_authenticate_as_their_clients(tmp_path: Path) -> None:
    recorder = Recorder()
    upstream, port = await start_upstream(recorder)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "client.key").write_text(FILE_KEY + "\n")
    text = gateway_toml({USERS: f"127.0.0.1:{port}"}, rules="") + (
        f'\n[[api_keys]]\nclient = "hashed"\nkey = "{written_digest(DIGEST_KEY)}"\n'
        f'\n[[api_keys]]\nclient = "from-env"\nkey_env = "{ENV_NAME}"\n'
        # Relative to the config's folder, wherever the gateway is started from.
        '\n[[api_keys]]\nclient = "from-file"\nkey_file = "keys/client.key"\n'
    )
    assert DIGEST_KEY not in text  # the config holds no usable secret for that client
    config = write_config(tmp_path, text)
    try:
        async with gateway_beside(config, env={ENV_NAME: ENV_KEY}) as gateway:
            for key, client in (
                (DIGEST_KEY, "hashed"),
                (ENV_KEY, "from-env"),
                (FILE_KEY, "from-file"),
                (API_KEY, "demo"),
            ):
                result = await get_user(gateway.address, key, ECHO)
                assert result.code == grpc.StatusCode.OK, (client, result)
                forwarded = recorder.metadata[-1]
                assert forwarded["x-client-id"] == client
                assert "x-api-key" not in forwarded

            # The digest is not a key, and a wrong key is not echoed back.
            for wrong in (written_digest(DIGEST_KEY), "wrong-key-5d2a"):
                result = await get_user(gateway.address, wrong, ECHO)
                assert (result.code, result.details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
            logs = stderr_text(gateway.process)
    finally:
        await upstream.stop(0)
    assert '"listening"' in logs  # the log was read, and has lines
    for secret in (DIGEST_KEY, ENV_KEY, FILE_KEY, API_KEY, "wrong-key-5d2a"):
        assert secret not in logs


SECRET = "s3cret-value-9q"
OTHER = '\n[[api_keys]]\nclient = "other"\n'

KEY_CONFIG_ERRORS = {
    "two sources": (
        OTHER + f'key = "{SECRET}"\nkey_env = "X"\n',
        "api_keys[1]: give exactly one of key, key_env or key_file (got key and key_env)",
    ),
    "no source": (OTHER, "api_keys[1]: give exactly one of key, key_env or key_file (got none)"),
    "unset variable": (
        OTHER + 'key_env = "GATEWAY_TEST_UNSET_VARIABLE"\n',
        "api_keys[1].key_env: the environment variable GATEWAY_TEST_UNSET_VARIABLE is not set",
    ),
    "missing key file": (
        OTHER + 'key_file = "absent.key"\n',
        "api_keys[1].key_file: cannot read {folder}/absent.key (No such file or directory)",
    ),
    "empty key file": (OTHER + 'key_file = "empty.key"\n', "api_keys[1].key_file: the key is empty"),
    "short digest": (
        OTHER + 'key = "sha256:00ff"\n',
        "api_keys[1].key: a key written as 'sha256:…' needs the 64 hex digits",
    ),
    "non-ASCII key": (OTHER + 'key = "clé-secrète"\n', "api_keys[1].key: a key must be printable ASCII"),
    "same key as another client": (
        OTHER + f'key = "{written_digest(API_KEY)}"\n',
        "api_keys[1]: the same key as api_keys[0] (client 'demo'); give every client a key of its own",
    ),
    "client name unfit for metadata": (
        '\n[[api_keys]]\nclient = "ünïcode"\n' + f'key = "{SECRET}"\n',
        "api_keys[1].client: 'ünïcode' must be printable ASCII",
    ),
    "allow names nothing routed": (
        OTHER + f'key = "{SECRET}"\nallow = ["shop.nope.v1.Nope"]\n',
        "api_keys[1].allow[0]: 'shop.nope.v1.Nope' is neither a routed service nor a method of one; "
        "routed services: shop.users.v1.UserService",
    ),
    "allow method without its slash": (
        OTHER + f'key = "{SECRET}"\nallow = ["shop.users.v1.UserService/GetUser"]\n',
        "(a method is written /package.Service/Method)",
    ),
    "negative max_failures": (
        "\n[auth]\nmax_failures = -1\n",
        "auth.max_failures: Input should be greater than or equal to 0",
    ),
    "tiny message limit": (
        "\n[limits]\nmax_message_bytes = 10\n",
        "limits.max_message_bytes: Input should be greater than or equal to 1024",
    ),
    "public reflection switched off": (
        "\n[reflection]\nenabled = false\npublic = true\n",
        "reflection: public = true needs enabled = true",
    ),
}


@pytest.mark.parametrize("case", KEY_CONFIG_ERRORS, ids=list(KEY_CONFIG_ERRORS))
def test_key_config_errors_name_the_field_and_never_the_key(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tail, expected = KEY_CONFIG_ERRORS[case]
    (tmp_path / "empty.key").write_text("\n")
    monkeypatch.delenv("GATEWAY_TEST_UNSET_VARIABLE", raising=False)
    config = write_config(tmp_path, gateway_toml({USERS: "127.0.0.1:50051"}, rules="") + tail)
    code, stderr = run_main("--config", str(config), "--listen", "127.0.0.1:0")
    assert code == 2, stderr
    [line] = stderr.splitlines()  # one line, no traceback
    assert line.startswith(f"grpc-gateway: error: config {config}: ")
    assert expected.format(folder=tmp_path) in line
    for secret in (SECRET, API_KEY, "clé-secrète"):
        assert secret not in line


def test_a_key_error_stops_the_real_process_with_exit_2(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, gateway_toml({USERS: "127.0.0.1:50051"}, rules="") + OTHER + f'key_env = "{ENV_NAME}"\n'
    )
    env = {key: value for key, value in os.environ.items() if key != ENV_NAME}
    result = run_cli("--config", str(config), "--listen", "127.0.0.1:0", env=env)
    assert result.returncode == 2
    assert result.stderr == (
        f"grpc-gateway: error: config {config}: "
        f"api_keys[1].key_env: the environment variable {ENV_NAME} is not set\n"
    )
