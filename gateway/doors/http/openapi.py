"""An OpenAPI 3.1 document of the HTTP/JSON door, generated from the descriptors and the routes.

Paths and parameters come from each binding's template and query fields, request and reply
schemas from the messages (as proto3 JSON writes them: 64-bit integers as strings, enums by name,
well-known types as their JSON forms), descriptions from the .proto comments the descriptor set
keeps, and every error is a ``google.rpc.Status``.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor

from gateway.routing.http.bindings import Binding, HttpRoutes, field_at
from gateway.version import VERSION
from runtime.descriptors import DescriptorCatalog

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    # proto3 JSON writes 64-bit integers as strings (and reads either).
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}

_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d+)?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
    "google.protobuf.FloatValue": {"type": ["number", "null"]},
    "google.protobuf.Int64Value": {"type": ["string", "null"], "format": "int64"},
    "google.protobuf.UInt64Value": {"type": ["string", "null"], "format": "uint64"},
    "google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"]},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
}

STATUS_SCHEMA = {
    "type": "object",
    "description": "A google.rpc.Status: the gRPC code, a message a person can act on, and typed details.",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "The google.rpc.Code."},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Any"}},
    },
    "required": ["code", "message", "details"],
}

# The errors every call may meet, by HTTP status: the gateway's own and an upstream's.
_ERRORS = {
    400: "The request is not a valid message, or a field's value is wrong (INVALID_ARGUMENT …)",
    401: "No valid API key (UNAUTHENTICATED)",
    403: "The key may not call this method (PERMISSION_DENIED)",
    404: "Not found (NOT_FOUND)",
    429: "Over a rate limit: Retry-After says when to come back (RESOURCE_EXHAUSTED)",
    503: "The upstream cannot be reached (UNAVAILABLE)",
}


class _Comments:
    """The .proto comments of messages, fields and methods, from the descriptor set's source info."""

    def __init__(self, catalog: DescriptorCatalog) -> None:
        self._catalog = catalog
        self._by_file: dict[str, dict[tuple[int, ...], str]] = {}

    def _file(self, file: FileDescriptor) -> dict[tuple[int, ...], str]:
        comments = self._by_file.get(file.name)
        if comments is None:
            proto = descriptor_pb2.FileDescriptorProto.FromString(self._catalog.file_protos(file)[0])
            comments = {
                tuple(location.path): location.leading_comments.strip()
                for location in proto.source_code_info.location
                if location.leading_comments.strip()
            }
            self._by_file[file.name] = comments
        return comments

    def of(self, file: FileDescriptor, path: tuple[int, ...]) -> str:
        return self._file(file).get(path, "")


def _message_path(message: Descriptor) -> tuple[int, ...]:
    """The source-info path of a message: [4, index] at the top, [..., 3, index] when nested."""
    parent = message.containing_type
    if parent is None:
        return (4, list(message.file.message_types_by_name.values()).index(message))
    return (*_message_path(parent), 3, list(parent.nested_types).index(message))


def _operation_id(binding: Binding, taken: set[str]) -> str:
    base = f"{binding.method.containing_service.name}_{binding.method.name}"
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base}_{number}"
    taken.add(name)
    return name


class _Schemas:
    def __init__(self, comments: _Comments, proto_names: bool) -> None:
        self.components: dict[str, Any] = {
            "google.rpc.Status": STATUS_SCHEMA,
            "google.protobuf.Any": _WELL_KNOWN["google.protobuf.Any"],
        }
        self._comments = comments
        self._proto_names = proto_names

    def name(self, field: FieldDescriptor) -> str:
        return field.name if self._proto_names else field.json_name

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value)}
        single = self._single(field)
        return {"type": "array", "items": single} if field.is_repeated else single

    def _single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.ref(field.message_type)
        if field.enum_type is not None:
            return self._enum(field.enum_type)
        return dict(_SCALARS[field.type])

    @staticmethod
    def _enum(enum: EnumDescriptor) -> dict[str, Any]:
        return {"type": "string", "enum": [value.name for value in enum.values]}

    def ref(self, message: Descriptor) -> dict[str, Any]:
        known = _WELL_KNOWN.get(message.full_name)
        if known is not None and message.full_name != "google.protobuf.Any":
            return dict(known)
        if message.full_name not in self.components:
            self.components[message.full_name] = {}  # placed first: a message may contain itself
            self.components[message.full_name] = self._message(message)
        return {"$ref": f"#/components/schemas/{message.full_name}"}

    def _message(self, message: Descriptor) -> dict[str, Any]:
        path = _message_path(message)
        properties = {}
        for field in message.fields:
            schema = self.field(field)
            comment = self._comments.of(message.file, (*path, 2, field.index))
            if comment:
                schema = (
                    {**schema, "description": comment}
                    if "$ref" not in schema
                    else {"allOf": [schema], "description": comment}
                )
            properties[self.name(field)] = schema
        described: dict[str, Any] = {"type": "object", "properties": properties}
        comment = self._comments.of(message.file, path)
        if comment:
            described["description"] = comment
        return described


def _query_parameters(binding: Binding, schemas: _Schemas) -> list[dict[str, Any]]:
    """Every top-level scalar field that the path and body leave to the query string."""
    if binding.body == "*":
        return []
    bound = binding.path_fields | {binding.body}
    parameters = []
    for field in binding.method.input_type.fields:
        if field.name in bound or field.message_type is not None:
            continue
        parameters.append(
            {
                "name": field.name,
                "in": "query",
                "required": False,
                "schema": schemas.field(field),
                "explode": True,
            }
        )
    return parameters


def _path(binding: Binding) -> str:
    """The template as an OpenAPI path: ``{name=shelves/*}`` becomes ``{name}``."""
    return re.sub(r"\{([^}=]+)=[^}]*\}", r"{\1}", binding.template.text)


def openapi_document(
    routes: HttpRoutes, catalog: DescriptorCatalog, proto_names: bool, title: str = "shop gRPC gateway"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every binding."""
    comments = _Comments(catalog)
    schemas = _Schemas(comments, proto_names)
    paths: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    for binding in routes.bindings:
        method = binding.method
        service = method.containing_service
        description = comments.of(service.file, (6, service.index, 2, method.index))
        operation: dict[str, Any] = {
            "operationId": _operation_id(binding, taken),
            "summary": f"{service.full_name}.{method.name}",
            "description": description,
            "tags": [service.full_name],
            "parameters": [
                {
                    "name": ".".join(variable.field_path),
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"}
                    if variable.multi_segment
                    else _path_schema(binding, variable.field_path, schemas),
                }
                for variable in binding.template.variables
            ]
            + _query_parameters(binding, schemas),
            "responses": _responses(binding, schemas),
        }
        body = _request_body(binding, schemas)
        if body is not None:
            operation["requestBody"] = body
        paths.setdefault(_path(binding), {})[binding.verb.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": VERSION,
            "description": "Every routed gRPC method as JSON, through the gateway's auth and rate limits.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
        },
        "security": [{"apiKey": []}],
    }


def _path_schema(binding: Binding, path: tuple[str, ...], schemas: _Schemas) -> dict[str, Any]:
    field = field_at(binding.method.input_type, path)
    return schemas.field(field) if field is not None else {"type": "string"}


def _request_body(binding: Binding, schemas: _Schemas) -> dict[str, Any] | None:
    request = binding.method.input_type
    if binding.body == "":
        return None
    schema = (
        schemas.ref(request) if binding.body == "*" else schemas.field(request.fields_by_name[binding.body])
    )
    media = "application/x-ndjson" if binding.method.client_streaming else "application/json"
    note = "One message a line." if binding.method.client_streaming else ""
    return {"required": True, "description": note, "content": {media: {"schema": schema}}}


def _responses(binding: Binding, schemas: _Schemas) -> dict[str, Any]:
    reply = binding.method.output_type
    schema = (
        schemas.ref(reply)
        if not binding.response_body
        else schemas.field(reply.fields_by_name[binding.response_body])
    )
    if binding.method.server_streaming:
        content = {
            "application/x-ndjson": {"schema": schema},
            "text/event-stream": {"schema": {"type": "string"}},
        }
        description = 'One message a line; an error after the first is a last line {"error": Status}'
    else:
        content = {"application/json": {"schema": schema}}
        description = "The reply"
    status_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}}
    responses: dict[str, Any] = {"200": {"description": description, "content": content}}
    for status, text in _ERRORS.items():
        responses[str(status)] = {"description": text, "content": status_ref}
    responses["default"] = {
        "description": "Any other gRPC status, as google.rpc.Code maps it",
        "content": status_ref,
    }
    return responses
