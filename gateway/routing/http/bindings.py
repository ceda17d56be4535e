"""The HTTP routes of the JSON door: which (verb, path) calls which gRPC method, and how.

From three sources, compiled once per configuration: the ``google.api.http`` rules on the
methods' descriptors (``additional_bindings`` too); ``POST /{package.Service}/{Method}`` for a
routed method without a rule, so a service known only from a descriptor set works with no change
to its protos; and ``[[http.routes]]`` in the config, for paths that are in no proto.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from gateway.config.schema import ConfigError, HttpRoute
from gateway.routing.http.templates import PathTemplate, TemplateError, parse_template
from gateway.routing.table import MethodRoute, RouteTable

_VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Binding:
    """One HTTP route to one gRPC method."""

    verb: str  # GET, POST, …
    template: PathTemplate
    route: MethodRoute
    method: MethodDescriptor
    response_type: type[Message]
    body: str  # "": no body; "*": the whole request; else the request field the body fills
    response_body: str  # "": the whole reply; else the reply field that is the body

    @property
    def path_fields(self) -> frozenset[str]:
        """Top-level request fields bound by the path."""
        return frozenset(variable.field_path[0] for variable in self.template.variables)


@dataclass(frozen=True)
class Match:
    binding: Binding
    variables: dict[tuple[str, ...], str]


@dataclass(frozen=True)
class NoRoute:
    """No route has this path (404); ``allowed``: the verbs that do, when another verb would match (405)."""

    allowed: tuple[str, ...] = ()


def field_at(message: Descriptor, path: Iterable[str]) -> FieldDescriptor | None:
    """The field at a dotted path (proto or JSON names), through message fields; None if there is none."""
    field = None
    current: Descriptor | None = message
    for name in path:
        if current is None:
            return None
        field = current.fields_by_name.get(name) or next(
            (candidate for candidate in current.fields if candidate.json_name == name), None
        )
        if field is None:
            return None
        current = field.message_type
    return field


def _rule_problem(binding: Binding) -> str | None:
    request = binding.method.input_type
    for variable in binding.template.variables:
        field = field_at(request, variable.field_path)
        if field is None:
            return f"the path names {'.'.join(variable.field_path)}, which {request.full_name} does not have"
        if field.is_repeated or field.message_type is not None:
            return f"the path variable {'.'.join(variable.field_path)} is not a single scalar field"
    if binding.body not in ("", "*") and binding.body not in request.fields_by_name:
        return f"body {binding.body!r} is not a field of {request.full_name}"
    reply = binding.method.output_type
    if binding.response_body and binding.response_body not in reply.fields_by_name:
        return f"response_body {binding.response_body!r} is not a field of {reply.full_name}"
    return None


def _binding(
    rule: http_pb2.HttpRule, route: MethodRoute, method: MethodDescriptor, response_type: type[Message]
) -> Binding:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise TemplateError("the rule has no path (get, post, put, delete, patch or custom)")
    if kind == "custom":
        verb, path = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, path = kind.upper(), getattr(rule, kind)
    return Binding(verb, parse_template(path), route, method, response_type, rule.body, rule.response_body)


class HttpRoutes:
    """Every binding, matched against a request's verb and path."""

    def __init__(self, routes: RouteTable, extra: Iterable[HttpRoute] = ()) -> None:
        """Raises ConfigError for a rule that names no field of its method, or a bad template."""
        self.bindings: list[Binding] = []
        for route in routes.methods.values():
            method = self._method(routes, route)
            response_type = message_factory.GetMessageClass(method.output_type)
            options = method.GetOptions()
            rules: list[http_pb2.HttpRule] = []
            if options.HasExtension(annotations_pb2.http):
                rule = options.Extensions[annotations_pb2.http]
                rules = [rule, *rule.additional_bindings]
            else:
                rules = [http_pb2.HttpRule(post=route.path, body="*")]
            for rule in rules:
                where = f"the google.api.http rule of {route.path}"
                try:
                    binding = _binding(rule, route, method, response_type)
                except TemplateError as error:
                    raise ConfigError(f"{where}: {error}") from None
                self._add(binding, where)
        for index, entry in enumerate(extra):
            where = f"http.routes[{index}]"
            called = routes.methods.get(entry.call)
            if called is None:
                raise ConfigError(
                    f"{where}.call: {entry.call!r} is not a routed method (/package.Service/Method)"
                )
            method = self._method(routes, called)
            rule = http_pb2.HttpRule(body=entry.body, response_body=entry.response_body)
            setattr(rule, entry.method.lower(), entry.path)
            try:
                binding = _binding(rule, called, method, message_factory.GetMessageClass(method.output_type))
            except TemplateError as error:
                raise ConfigError(f"{where}.path: {error}") from None
            self._add(binding, where)
        # Matched most specific first: more literal segments, then fewer variables. (``bindings``
        # keeps the order they were declared in: the protos' first, as documents list them.)
        self._matching = sorted(
            self.bindings, key=lambda b: (-b.template.literals, len(b.template.variables))
        )

    @staticmethod
    def _method(routes: RouteTable, route: MethodRoute) -> MethodDescriptor:
        service = routes.catalog.find_service(route.service)
        if service is None:  # build_routes found it a moment ago
            raise ConfigError(f"no descriptor for {route.service}")
        method: MethodDescriptor = service.methods_by_name[route.path.rsplit("/", 1)[1]]
        return method

    def _add(self, binding: Binding, where: str) -> None:
        problem = _rule_problem(binding)
        if problem is not None:
            raise ConfigError(f"{where}: {problem}")
        for other in self.bindings:
            if other.verb == binding.verb and other.template.text == binding.template.text:
                raise ConfigError(
                    f"{where}: {binding.verb} {binding.template.text} is already bound to {other.route.path}"
                )
        self.bindings.append(binding)

    def match(self, verb: str, path: str) -> Match | NoRoute:
        allowed: list[str] = []
        for binding in self._matching:
            variables = binding.template.match(path)
            if variables is None:
                continue
            if binding.verb == verb:
                return Match(binding, variables)
            if binding.verb not in allowed:
                allowed.append(binding.verb)
        return NoRoute(tuple(allowed))
