"""JSON ↔ messages by descriptor (protobuf's json_format): requests from path, query and body;
replies to JSON. Nothing here knows a service: the binding's descriptors say everything."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

from gateway.routing.http.bindings import Binding, field_at


class BadRequest(ValueError):
    """The request cannot be a message of the method's input type; the message names the field."""


def _scalar(field: FieldDescriptor, text: str, name: str) -> Any:
    """A path or query value as json_format takes it: numbers, enums and strings as text; bools parsed."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text not in ("true", "false"):
            raise BadRequest(f"{name}: {text!r} is not true or false")
        return text == "true"
    return text


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any, repeated: bool) -> None:
    for name in path[:-1]:
        inner = data.setdefault(name, {})
        if not isinstance(inner, dict):
            raise BadRequest(f"{'.'.join(path)}: set twice, once as a whole")
        data = inner
    if repeated:
        data.setdefault(path[-1], []).append(value)
    elif path[-1] in data:
        raise BadRequest(f"{'.'.join(path)}: given more than once")
    else:
        data[path[-1]] = value


def parse_json(text: bytes, what: str) -> Any:
    try:
        # Decoded first: json.loads would take bytes for UTF-16 or UTF-32 when they look like it.
        return json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest(f"{what} is not UTF-8") from None
    except json.JSONDecodeError as error:
        raise BadRequest(
            f"{what} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None


def request_message(
    binding: Binding,
    variables: dict[tuple[str, ...], str],
    query: list[tuple[str, str]],
    body: Any,
    pool: DescriptorPool,
) -> Message:
    """The request: ``body`` (parsed JSON, or None) where the rule puts it, the path's variables,
    and the query parameters for every other field (repeated fields from repeated parameters,
    nested fields by dotted names).

    Raises:
        BadRequest: naming the field or parameter at fault.
    """
    request = binding.method.input_type
    data: dict[str, Any] = {}
    if binding.body == "*":
        if body is not None:
            if not isinstance(body, dict):
                raise BadRequest(f"the body must be a JSON object: a {request.name}")
            data = body
    elif binding.body:
        if body is not None:
            data[binding.body] = body
    elif body is not None:
        raise BadRequest(f"{binding.verb} {binding.template.text} takes no body")
    for path, value in variables.items():
        field = field_at(request, path)
        if field is None:  # checked when the binding was made
            raise BadRequest(f"{'.'.join(path)}: no such field")
        _put(data, path, _scalar(field, value, ".".join(path)), repeated=False)
    bound = binding.path_fields | ({binding.body} if binding.body not in ("", "*") else set())
    for name, value in query:
        path = tuple(name.split("."))
        field = field_at(request, path)
        if field is None or field.message_type is not None:
            raise BadRequest(f"query parameter {name!r}: {request.full_name} has no scalar field {name!r}")
        if binding.body == "*" or path[0] in bound:
            raise BadRequest(f"query parameter {name!r}: the field is already set by the path or the body")
        _put(data, path, _scalar(field, value, name), repeated=field.is_repeated)
    message = binding.route.request_type()
    try:
        json_format.ParseDict(data, message, descriptor_pool=pool)
    except json_format.ParseError as error:
        raise BadRequest(str(error)) from None
    return message


def reply_json(binding: Binding, reply: bytes, proto_names: bool, pool: DescriptorPool) -> Any:
    """The reply (or its ``response_body`` field) as JSON data, every field present."""
    message = binding.response_type.FromString(reply)
    data = json_format.MessageToDict(
        message,
        preserving_proto_field_name=proto_names,
        always_print_fields_with_no_presence=True,
        descriptor_pool=pool,
    )
    if binding.response_body:
        field = binding.method.output_type.fields_by_name[binding.response_body]
        return data.get(field.name if proto_names else field.json_name)
    return data
