"""What a user sees with grpcurl: reflection (with the proto comments) and calls as JSON."""

from __future__ import annotations

import json

from tests.services.conftest import RECOMMENDATIONS, USERS, Server
from tests.support.processes import grpcurl


def test_list_shows_the_service(user_service: Server) -> None:
    result = grpcurl("-plaintext", user_service.address, "list")
    assert result.returncode == 0, result.stderr
    assert USERS in result.stdout.splitlines()


def test_list_shows_the_recommendation_service(recommendation_service: Server) -> None:
    result = grpcurl("-plaintext", recommendation_service.address, "list")
    assert result.returncode == 0, result.stderr
    assert RECOMMENDATIONS in result.stdout.splitlines()


def test_describe_shows_rpcs_and_comments(user_service: Server) -> None:
    result = grpcurl("-plaintext", user_service.address, "describe", USERS)
    assert result.returncode == 0, result.stderr
    # The HTTP rule each method carries for the gateway's HTTP/JSON door shows with it.
    assert (
        "rpc GetUser ( .shop.users.v1.GetUserRequest ) returns ( .shop.users.v1.User ) {\n"
        '    option (.google.api.http) = { get:"/v1/users/{user_id}"  };\n' in result.stdout
    )
    assert "returns ( stream .shop.users.v1.User ) {" in result.stdout
    assert "// Looks up shoppers by id or by segment." in result.stdout


def test_get_user_as_json(user_service: Server) -> None:
    result = grpcurl("-plaintext", "-d", '{"user_id": 101}', user_service.address, f"{USERS}/GetUser")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"userId": 101, "name": "Atul", "segment": "premium"}


def test_get_unknown_user_shows_not_found(user_service: Server) -> None:
    result = grpcurl("-plaintext", "-d", '{"user_id": 999}', user_service.address, f"{USERS}/GetUser")
    assert result.returncode != 0
    assert "Code: NotFound" in result.stderr
    assert "Message: user 999 not found" in result.stderr
