"""gRPC statuses as a web client reads them: the HTTP status google.rpc.Code documents, and the
``google.rpc.Status`` as JSON with its details typed by ``@type``."""

from __future__ import annotations

import base64
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

# google/rpc/code.proto's "HTTP Mapping" of each code.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

DETAILS_HEADER = "grpc-status-details-bin"


def status_json(code: grpc.StatusCode, message: str, trailers: Any, pool: DescriptorPool) -> dict[str, Any]:
    """``{"code": 8, "message": "…", "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", …}]}``.

    The details come from ``grpc-status-details-bin`` in ``trailers``; one whose type the gateway does
    not know is kept as ``{"@type": …, "value": base64}``, as proto3 JSON writes an unknown Any.
    """
    body: dict[str, Any] = {"code": code.value[0], "message": message, "details": []}
    raw = next((value for key, value in trailers or () if key == DETAILS_HEADER), None)
    if not isinstance(raw, bytes):
        return body
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return body
    for detail in status.details:
        try:
            body["details"].append(json_format.MessageToDict(detail, descriptor_pool=pool))
        except (TypeError, KeyError, json_format.Error):
            encoded = base64.b64encode(detail.value).decode()
            body["details"].append({"@type": detail.type_url, "value": encoded})
    return body
