"""The configuration reference, made from the config's pydantic models each time the site is built.

``docs/configuration.md`` holds :data:`MARKER`; this mkdocs hook puts in its place a section per TOML
table, each key with its type and limits (from the JSON Schema the models give, which is what a TOML
file must satisfy), its default and description (from the models' fields) and whether SIGHUP applies
it (from what ``gateway/app.py``'s reload keeps). Nothing in it is written by hand, so the page cannot
disagree with ``gateway/config/schema.py``.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gateway.app import RESTART_ONLY
from gateway.config.schema import GatewayConfig

MARKER = "<!-- config-reference -->"
# Where docs/operations.md has the one table of what a SIGHUP applies and what needs a restart.
RELOAD_MARKER = "<!-- reload-table -->"
# What gateway/app.py's reload also keeps until a restart, compared there apart from RESTART_ONLY's
# top-level fields.
NESTED_RESTART_ONLY = ("http.listen",)

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Key:
    """One key of a TOML table, as the reference shows it."""

    path: str  # dotted, from the top: "rate_limit.rules.rate"
    name: str
    type: str
    default: str
    reloads: bool  # whether a SIGHUP applies a change of it
    description: str
    table: str | None  # the dotted path of the table it is, when it is one


@dataclass(frozen=True)
class Table:
    """A TOML table (the top level, ``[rate_limit]``, ``[[routes]]``...) and its keys."""

    path: str  # dotted; "" for the top level
    header: str
    description: str
    keys: tuple[Key, ...]


def tables() -> list[Table]:
    """Every table of a config file, depth first in the models' field order, the top level first."""
    schema = GatewayConfig.model_json_schema()
    found: list[Table] = []
    _walk(GatewayConfig, schema, schema["$defs"], "", "Top level", _doc(GatewayConfig), False, found)
    return found


def reference_markdown() -> str:
    """The reference: a section per table, each a Markdown table of its keys."""
    parts = []
    for table in tables():
        anchor = table.path or "top-level"
        title = f"`{table.header}`" if table.path else table.header
        parts += [f"## {title} {{ #{anchor} }}", "", table.description, ""]
        parts += ["| key | type | default | SIGHUP | description |", "|---|---|---|---|---|"]
        for key in table.keys:
            kind = f"[{key.type}](#{key.table})" if key.table is not None else key.type
            sighup = "applies" if key.reloads else "**restart**"
            cells = (f"`{key.name}`", kind, key.default, sighup, key.description)
            parts.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        parts.append("")
    return "\n".join(parts)


def reload_markdown() -> str:
    """What a SIGHUP applies and what needs a restart, for each top-level key or table."""
    rows = ["| in the config | on SIGHUP |", "|---|---|"]
    for key in tables()[0].keys:
        name = f"`{key.name}`" if key.table is None else f"[`{_header(key)}`](configuration.md#{key.table})"
        exceptions = [path for path in NESTED_RESTART_ONLY if path.startswith(key.path + ".")]
        but = " (but " + ", ".join(f"`{path.removeprefix(key.path + '.')}`" for path in exceptions) + ")"
        rows.append(f"| {name}{but if exceptions else ''} | {_reload(key.reloads)} |")
        for path in exceptions:
            rows.append(f"| `[{key.path}] {path.removeprefix(key.path + '.')}` | {_reload(False)} |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, /, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    """mkdocs hook: the reference in place of :data:`MARKER`, the reload table of :data:`RELOAD_MARKER`."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, reference_markdown())
    if RELOAD_MARKER in markdown:
        markdown = markdown.replace(RELOAD_MARKER, reload_markdown())
    return markdown


def _header(key: Key) -> str:
    return next(table.header for table in tables() if table.path == key.table)


def _reload(reloads: bool) -> str:
    return "applied to the calls that follow" if reloads else "**needs a restart**"


def _walk(
    model: type[BaseModel],
    schema: JsonObject,
    defs: JsonObject,
    path: str,
    header: str,
    description: str,
    restart: bool,
    found: list[Table],
) -> None:
    keys = []
    nested: list[tuple[type[BaseModel], JsonObject, str, str, str, bool]] = []
    for name, field in model.model_fields.items():
        prop = schema["properties"][name]
        key_path = f"{path}.{name}" if path else name
        key_restart = restart or key_path in RESTART_ONLY or key_path in NESTED_RESTART_ONLY
        target = _nested(prop)
        child = _model_of(field.annotation) if target is not None else None
        if target is not None and child is not None:
            ref, many = target
            child_header = f"[[{key_path}]]" if many else f"[{key_path}]"
            # What the table is; the row of its key in this table says how it is used here.
            intro = _doc(child) or _text(field.description)
            nested.append((child, defs[ref], key_path, child_header, intro, key_restart))
        keys.append(
            Key(
                path=key_path,
                name=name,
                type=_type(prop) + _limits(prop),
                default=_default(field),
                reloads=not key_restart,
                description=_text(field.description),
                table=key_path if child is not None else None,
            )
        )
    found.append(Table(path, header, description, tuple(keys)))
    for child, child_schema, child_path, child_header, intro, child_restart in nested:
        _walk(child, child_schema, defs, child_path, child_header, intro, child_restart, found)


def _nested(prop: JsonObject) -> tuple[str, bool] | None:
    """The $defs name of the table ``prop`` is (or the tables it is an array of), and whether an array."""
    for option in [prop, *prop.get("anyOf", ())]:
        if "$ref" in option:
            return option["$ref"].rsplit("/", 1)[-1], False
        if option.get("type") == "array" and "$ref" in option.get("items", {}):
            return option["items"]["$ref"].rsplit("/", 1)[-1], True
    return None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class a field's annotation holds: itself, optional, or as the items of a tuple."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple, typing.Annotated):
        for argument in typing.get_args(annotation):
            model = _model_of(argument)
            if model is not None:
                return model
    return None


def _type(prop: JsonObject) -> str:
    if "$ref" in prop:
        return "table"
    if "anyOf" in prop:
        return " or ".join(_type(option) for option in prop["anyOf"] if option.get("type") != "null")
    if "enum" in prop:
        values: list[Any] = prop["enum"]
        upper = [value for value in values if isinstance(value, str) and value == value.upper()]
        # An enum of upper and lower case alike is a value taken in any case (access_log.level).
        any_case = bool(upper) and sorted(values) == sorted(upper + [value.lower() for value in upper])
        listed = ", ".join(f"`{json.dumps(value)}`" for value in (upper if any_case else values))
        return f"one of {listed}" + (" (any case)" if any_case else "")
    kind = prop.get("type")
    if kind == "array":
        items = prop.get("items", {})
        return "array of tables" if "$ref" in items else f"array of {_type(items)}"
    if kind == "object":
        values_schema = prop.get("additionalProperties")
        return f"table of {_type(values_schema)}" if isinstance(values_schema, dict) else "table"
    if kind == "string":
        return {"password": "string (secret)", "path": "path"}.get(prop.get("format", ""), "string")
    if isinstance(kind, str):
        return kind
    return "any"


def _limits(prop: JsonObject) -> str:
    """What the value must satisfy besides its type, such as ``, > 0, ≤ 60``."""
    options = [option for option in prop.get("anyOf", ()) if option.get("type") != "null"]
    checked = options[0] if len(options) == 1 else prop
    bounds = (("exclusiveMinimum", ">"), ("minimum", "≥"), ("exclusiveMaximum", "<"), ("maximum", "≤"))
    parts = [f"{sign} {_number(checked[name])}" for name, sign in bounds if name in checked]
    if checked.get("minItems"):
        parts.append(f"at least {checked['minItems']}")
    if checked.get("minLength"):
        length = checked["minLength"]
        parts.append("not empty" if length == 1 else f"at least {length} characters")
    return (", " + ", ".join(parts)) if parts else ""


def _number(value: float) -> str:
    return f"{value:,}".replace(",", " ") if isinstance(value, int) and abs(value) >= 10000 else str(value)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return ""
    return f"`{_toml(value)}`"


def _toml(value: Any) -> str:
    """``value`` written as in a TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | PurePath):
        return json.dumps(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{key} = {_toml(item)}" for key, item in value.items())
        return f"{{ {pairs} }}" if pairs else "{}"
    raise TypeError(f"no TOML form for the default {value!r}")


def _doc(model: type[BaseModel]) -> str:
    """A model's docstring as one paragraph (empty when it has none of its own)."""
    return _text(inspect.cleandoc(model.__doc__)) if model.__doc__ else ""


def _text(text: str | None) -> str:
    return " ".join((text or "").split())


def _cell(text: str) -> str:
    """``text`` in a Markdown table cell: a pipe would end the cell."""
    return text.replace("|", "\\|")
