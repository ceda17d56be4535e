"""google.api.http path templates and the code → HTTP status table, without servers."""

from __future__ import annotations

import re

import grpc
import pytest

from gateway.call.replies import HTTP_STATUS
from gateway.routing.http.templates import TemplateError, parse_template

# The same on either engine (tests/conftest.py).
pytestmark = pytest.mark.engine_neutral


@pytest.mark.parametrize(
    ("template", "path", "variables"),
    [
        ("/v1/users/{user_id}", "/v1/users/104", {("user_id",): "104"}),
        ("/v1/users/{user_id}", "/v1/users/104/x", None),
        ("/v1/users/{user_id}", "/v1/users/", None),
        ("/v1/users/{user_id}", "/v1/users/a%20b", {("user_id",): "a b"}),
        (
            "/v1/{name=shelves/*}/books/{book.id}",
            "/v1/shelves/s1/books/7",
            {("name",): "shelves/s1", ("book", "id"): "7"},
        ),
        ("/v1/{name=shelves/*}", "/v1/shelves/s1/x", None),
        ("/v1/files/{path=**}", "/v1/files/a/b%2Fc", {("path",): "a/b%2Fc"}),
        ("/v1/files/{path=**}", "/v1/files", {("path",): ""}),
        ("/v1/*/items", "/v1/anything/items", {}),
        ("/v1/**", "/v1/a/b/c", {}),
        ("/v1/recommendations:group", "/v1/recommendations:group", {}),
        ("/v1/recommendations:group", "/v1/recommendations", None),
        ("/v1/{name}:publish", "/v1/book:publish", {("name",): "book"}),
    ],
)
def test_templates_match_as_http_proto_says(
    template: str, path: str, variables: dict[tuple[str, ...], str] | None
) -> None:
    assert parse_template(template).match(path) == variables


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("v1/users", "must begin with /"),
        ("/v1/**/x", "** must be the last segment"),
        ("/v1/{user id}", "is not a field path"),
        ("/v1/x{y}", "a variable must be a whole segment"),
        ("/v1/{a=**}/b", "** must be the last segment"),
        ("/v1/a b", "is not a path segment"),
    ],
)
def test_bad_templates_say_what_is_wrong(template: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(problem)):
        parse_template(template)


def test_every_code_has_the_http_status_google_rpc_code_documents() -> None:
    assert {code.name: status for code, status in HTTP_STATUS.items()} == {
        "OK": 200,
        "CANCELLED": 499,
        "UNKNOWN": 500,
        "INVALID_ARGUMENT": 400,
        "DEADLINE_EXCEEDED": 504,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409,
        "PERMISSION_DENIED": 403,
        "UNAUTHENTICATED": 401,
        "RESOURCE_EXHAUSTED": 429,
        "FAILED_PRECONDITION": 400,
        "ABORTED": 409,
        "OUT_OF_RANGE": 400,
        "UNIMPLEMENTED": 501,
        "INTERNAL": 500,
        "UNAVAILABLE": 503,
        "DATA_LOSS": 500,
    }
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
