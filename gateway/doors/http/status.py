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
