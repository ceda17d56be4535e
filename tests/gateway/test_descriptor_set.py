"""A service from outside this repository, fronted with config alone: a descriptor set file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from tests.gateway.configs import gateway_toml, write_config
from tests.gateway.conftest import start_gateway
from tests.support.processes import free_port, grpcurl

GREETER_PROTO = """
syntax = "proto3";
package acme.greeter.v1;

// Says hello.
service Greeter {
  rpc Greet(GreetRequest) returns (Greeting);
}
message GreetRequest { string name = 1; int32 user_id = 2; }
message Greeting { string text = 1; }
"""
SERVICE = "acme.greeter.v1.Greeter"


def compile_descriptor_set(folder: Path) -> Path:
    (folder / "greeter.proto").write_text(GREETER_PROTO)
    output = folder / "greeter.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{folder}",
            "--include_imports",
            f"--descriptor_set_out={output}",
            "greeter.proto",
        ],
        check=True,
    )
    return output


@pytest.fixture
async def greeter(tmp_path: Path) -> AsyncIterator[tuple[Path, str]]:
    """A Greeter upstream built from the descriptor set alone (no generated code anywhere).

    It runs on the test's event loop, so the test must not block that loop (grpcurl runs in a thread).
    """
    descriptor_set = compile_descriptor_set(tmp_path)
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
        pool.Add(file)
    request_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("acme.greeter.v1.GreetRequest"))
    reply_type = message_factory.GetMessageClass(pool.FindMessageTypeByName("acme.greeter.v1.Greeting"))

    async def greet(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = request_type.FromString(request).name  # type: ignore[attr-defined]
        return json_format.ParseDict({"text": f"hello {name}"}, reply_type()).SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Greet": grpc.unary_unary_rpc_method_handler(greet)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield descriptor_set, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_service_from_descriptor_set_only(greeter: tuple[Path, str], tmp_path: Path) -> None:
    descriptor_set, upstream = greeter
    text = gateway_toml(
        {SERVICE: upstream},
        rules='\n[[rate_limit.rules]]\nrate = "1/30 seconds"\nkey = "field:user_id"\n',
        extra=f'descriptor_sets = ["{descriptor_set.name}"]',
    )
    with start_gateway(write_config(tmp_path, text)) as address:
        key = ("-H", "x-api-key: secret-key")
        described = await asyncio.to_thread(grpcurl, "-plaintext", *key, address, "describe", SERVICE)
        assert described.returncode == 0, described.stderr
        assert (
            "rpc Greet ( .acme.greeter.v1.GreetRequest ) returns ( .acme.greeter.v1.Greeting );"
            in described.stdout
        )

        body = '{"name": "Ada", "user_id": 7}'
        method = f"{SERVICE}/Greet"
        greeted = await asyncio.to_thread(grpcurl, "-plaintext", *key, "-d", body, address, method)
        assert greeted.returncode == 0, greeted.stderr
        assert '"text": "hello Ada"' in greeted.stdout

        # The rate-limit field key works from the descriptor set too.
        refused = await asyncio.to_thread(grpcurl, "-plaintext", *key, "-d", body, address, method)
        assert "rate limit exceeded for user_id 7: 1 per 30 seconds" in refused.stdout + refused.stderr


async def test_service_from_descriptor_set_only_over_http(greeter: tuple[Path, str], tmp_path: Path) -> None:
    """No google.api.http rule anywhere: the method is POST /package.Service/Method with a JSON body."""
    descriptor_set, upstream = greeter
    text = gateway_toml({SERVICE: upstream}, rules="", extra=f'descriptor_sets = ["{descriptor_set.name}"]')
    http_port = free_port()
    with start_gateway(
        write_config(tmp_path, text + "\n[http]\n"), "--http-listen", f"127.0.0.1:{http_port}"
    ):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as web:
            reply = await web.post(
                f"/{SERVICE}/Greet", json={"name": "Ada"}, headers={"x-api-key": "secret-key"}
            )
            assert reply.status_code == 200
            assert reply.json() == {"text": "hello Ada"}
            wrong = await web.get(f"/{SERVICE}/Greet", headers={"x-api-key": "secret-key"})
            assert wrong.status_code == 405
