"""Path templates of ``google.api.http`` rules: ``/v1/{name=shelves/*}/books/{book.id}:publish``.

The syntax of google/api/http.proto::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

``*`` matches one path segment, ``**`` zero or more (last only); ``{a.b}`` is ``{a.b=*}``. A
variable that matches one segment is percent-decoded whole; one that matches several keeps its
``/`` (and ``%2F`` stays encoded, as http.proto says).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_LITERAL = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=@%]+$")
_SEGMENT = r"[^/]+"
_MORE_SEGMENTS = r"(?:/[^/]+)*"


class TemplateError(ValueError):
    """A path template that is not http.proto's syntax; the message says what is wrong."""


@dataclass(frozen=True)
class Variable:
    field_path: tuple[str, ...]  # ("book", "id") for {book.id}
    multi_segment: bool  # may match several segments


@dataclass(frozen=True)
class PathTemplate:
    """A compiled template: ``match`` a request path, get each variable's value."""

    text: str
    verb: str
    variables: tuple[Variable, ...]
    literals: int  # literal segments, to prefer the most specific of several matching templates
    pattern: re.Pattern[str]

    def match(self, path: str) -> dict[tuple[str, ...], str] | None:
        """Each variable's value (field path -> value) if ``path`` (percent-encoded) matches."""
        found = self.pattern.match(path)
        if found is None:
            return None
        values = {}
        for index, variable in enumerate(self.variables):
            raw = found.group(f"v{index}") or ""
            values[variable.field_path] = _unquote_keep_slash(raw) if variable.multi_segment else unquote(raw)
        return values


def _unquote_keep_slash(text: str) -> str:
    return "%2F".join(unquote(part) for part in re.split("%2[fF]", text))


def _split(body: str) -> list[str]:
    """Segments at the slashes outside braces: ``a/{b=c/*}/d`` -> a, {b=c/*}, d."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for character in body:
        depth += {"{": 1, "}": -1}.get(character, 0)
        if character == "/" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    parts.append("".join(current))
    return parts


def _segments(parts: list[str], problem: str) -> tuple[str, int]:
    """The regex of plain segments (a leading / before each), and how many are literals."""
    regex, literals = "", 0
    for position, part in enumerate(parts):
        if part == "**":
            if position != len(parts) - 1:
                raise TemplateError(f"{problem}: ** must be the last segment")
            regex += _MORE_SEGMENTS
        elif part == "*":
            regex += "/" + _SEGMENT
        elif _LITERAL.match(part):
            regex += "/" + re.escape(part)
            literals += 1
        else:
            raise TemplateError(f"{problem}: {part!r} is not a path segment")
    return regex, literals


def parse_template(text: str) -> PathTemplate:
    """Compile ``text``. Raises TemplateError naming the problem."""
    problem = f"path template {text!r}"
    if not text.startswith("/") or text == "/":
        raise TemplateError(f"{problem} must begin with / and name at least one segment")
    body, verb = text[1:], ""
    if text.rfind(":") > text.rfind("}") and text.rfind(":") > text.rfind("/"):
        body, _, verb = body.rpartition(":")
        if not _LITERAL.match(verb):
            raise TemplateError(f"{problem}: {verb!r} is not a verb")
    parts = _split(body)
    regex, literals = "", 0
    variables: list[Variable] = []
    for position, part in enumerate(parts):
        if part == "**" and position != len(parts) - 1:
            raise TemplateError(f"{problem}: ** must be the last segment")
        if not part.startswith("{"):
            if "{" in part or "}" in part:
                raise TemplateError(f"{problem}: a variable must be a whole segment, not {part!r}")
            segment, counted = _segments([part], problem)
            regex, literals = regex + segment, literals + counted
            continue
        if not part.endswith("}"):
            raise TemplateError(f"{problem}: a variable must be a whole segment, not {part!r}")
        name, _, inner = part[1:-1].partition("=")
        if not _IDENT.match(name):
            raise TemplateError(f"{problem}: {name!r} is not a field path such as book.id")
        inner_parts = inner.split("/") if inner else ["*"]
        if inner_parts[-1] == "**" and position != len(parts) - 1:
            raise TemplateError(f"{problem}: ** must be the last segment")
        inner_regex, counted = _segments(inner_parts, problem)
        literals += counted
        group = f"v{len(variables)}"
        if inner_parts == ["**"]:  # zero or more segments: the slash before them is optional too
            regex += f"(?:/(?P<{group}>{_SEGMENT}{_MORE_SEGMENTS}))?"
        else:
            # The variable's value holds no leading slash: drop the first one inside the group.
            regex += f"/(?P<{group}>{inner_regex[1:]})"
        variables.append(Variable(tuple(name.split(".")), len(inner_parts) > 1 or "**" in inner_parts))
    suffix = re.escape(f":{verb}") if verb else ""
    return PathTemplate(text, verb, tuple(variables), literals, re.compile(regex + suffix + r"\Z"))
