"""The config's JSON Schema, gateway/config/gateway.schema.json: current with the models, and true to
the configs people write (the reference, the examples, the bench's, the docs' own)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # the lock has no types-jsonschema
import pytest

from gateway.config.schema import JSON_SCHEMA_FILE, REFERENCE_CONFIG, json_schema_text, parse_config
from tests.docs.blocks import blocks
from tests.gateway.configs import RECOMMENDATIONS, USERS, gateway_toml

pytestmark = pytest.mark.engine_neutral

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted([REFERENCE_CONFIG, *ROOT.glob("examples/*.toml"), *ROOT.glob("bench/*.toml")])
PAGES = sorted(ROOT.glob("docs/*.md"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(JSON_SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(validator: jsonschema.protocols.Validator, config: dict[str, Any]) -> list[str]:
    return [described(error) for error in validator.iter_errors(config)]


def described(error: jsonschema.ValidationError) -> str:
    return f"{'.'.join(map(str, error.path)) or '(top level)'}: {error.message}"


def test_the_committed_schema_is_what_the_models_give() -> None:
    assert JSON_SCHEMA_FILE.read_text() == json_schema_text(), "run make schema, and commit the file"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: str(path.relative_to(ROOT)))
def test_the_schema_takes_every_config_file(validator: jsonschema.protocols.Validator, path: Path) -> None:
    config = tomllib.loads(path.read_text())
    parse_config(config, str(path))  # the gateway takes it, so the schema must
    assert problems(validator, config) == []


def test_the_schema_takes_the_configs_the_tests_write(validator: jsonschema.protocols.Validator) -> None:
    text = gateway_toml({USERS: "127.0.0.1:50051", RECOMMENDATIONS: "127.0.0.1:50052"})
    assert problems(validator, tomllib.loads(text)) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_the_schema_takes_every_toml_block_of_the_docs(
    validator: jsonschema.protocols.Validator, page: Path
) -> None:
    """A page may show part of a file: a block need not hold what every file must (routes). A block
    titled with another file's name (``.taplo.toml``) is not a gateway config."""
    for block in blocks(page.read_text()):
        if block.lang != "toml" or (block.title is not None and not block.title.startswith("gateway")):
            continue
        config = tomllib.loads(block.text)
        found = [
            described(error)
            for error in validator.iter_errors(config)
            if not (error.validator == "required" and not error.path)
        ]
        assert found == [], f"{page.name}:\n{block.text}"


def test_the_schema_refuses_what_the_gateway_refuses(validator: jsonschema.protocols.Validator) -> None:
    """An editor flags a typo, a wrong type, an unknown choice, before the gateway does."""
    routes = [{"service": "shop.users.v1.UserService", "upstream": "127.0.0.1:50051"}]
    assert problems(validator, {"routes": routes, "rate_limit": {"storge": "memory://"}})
    assert problems(validator, {"routes": routes, "shutdown_grace": "ten"})
    assert problems(
        validator, {"routes": routes, "rate_limit": {"rules": [{"rate": "5/minute", "key": "user"}]}}
    )
    assert problems(validator, {"routes": []})
