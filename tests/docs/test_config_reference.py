"""The configuration reference the docs build makes (docs/hooks/config_reference.py), against the
config's models: every key a config file can hold is in it, described, and marked as SIGHUP does it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from docs.hooks.config_reference import MARKER, NESTED_RESTART_ONLY, reference_markdown, tables
from gateway.app import RESTART_ONLY
from gateway.config.schema import GatewayConfig

pytestmark = pytest.mark.engine_neutral

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def toml_keys(schema: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every key a config file can hold, dotted, as the JSON Schema of the models says (a table's
    keys, and those of the tables in it)."""
    for name, prop in schema["properties"].items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        for option in [prop, *prop.get("anyOf", ()), prop.get("items", {})]:
            if "$ref" in option:
                yield from toml_keys(defs[option["$ref"].rsplit("/", 1)[-1]], defs, path)
                break


def sections(markdown: str) -> dict[str, str]:
    """The reference's sections by their anchor (a table's dotted path)."""
    parts = re.split(r"^## .*\{ #(\S+) \}$", markdown, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_key_of_a_config_file_is_in_the_reference() -> None:
    schema = GatewayConfig.model_json_schema()
    keys = set(toml_keys(schema, schema["$defs"]))
    listed = [key.path for table in tables() for key in table.keys]
    assert sorted(listed) == sorted(keys)
    shown = sections(reference_markdown())
    for table in tables():
        rows = shown[table.path or "top-level"]
        for key in table.keys:
            assert f"| `{key.name}` |" in rows, f"{key.path} has no row in its table's section"


def test_every_key_is_described() -> None:
    undescribed = [key.path for table in tables() for key in table.keys if not key.description]
    assert undescribed == [], "give these fields a Field(description=...) in gateway/config/schema.py"


def test_what_needs_a_restart_is_what_a_reload_keeps() -> None:
    for table in tables():
        for key in table.keys:
            top = key.path.split(".")[0]
            kept = top in RESTART_ONLY or any(
                key.path == path or key.path.startswith(path + ".") for path in NESTED_RESTART_ONLY
            )
            assert key.reloads is not kept, key.path


def test_defaults_are_written_as_in_toml() -> None:
    keys = {key.path: key for table in tables() for key in table.keys}
    assert keys["listen"].default == '`"127.0.0.1:50050"`'
    assert keys["rate_limit.storage_timeout"].default == "`0.05`"
    assert keys["rate_limit.rules.overrides"].default == "`{}`"
    assert keys["routes"].default == "required"
    assert keys["tls"].default == "unset"
    assert keys["access_log.enabled"].default == "`true`"
    assert keys["rate_limit.rules.key"].type.startswith("string")  # written "field:user_id"
    assert keys["access_log.level"].type.endswith("(any case)")


def test_the_configuration_page_holds_the_reference() -> None:
    assert MARKER in PAGE.read_text()
