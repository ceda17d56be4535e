"""The gateway's configuration: one TOML file, validated into typed objects at start-up."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import limits
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from runtime.addresses import parse_host_port

REFERENCE_CONFIG = Path(__file__).with_name("reference.toml")


class ConfigError(Exception):
    """The configuration is unusable; the message names the field and the problem."""


def _address(value: str) -> str:
    parse_host_port(value)
    return value


def _rate(value: str) -> str:
    try:
        limits.parse(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a rate; write COUNT/PERIOD, e.g. '5/30 seconds' or '1000/minute'"
        ) from None
    return value


Address = Annotated[str, AfterValidator(_address)]
Rate = Annotated[str, AfterValidator(_rate)]
Strategy = Literal["moving-window", "sliding-window-counter", "fixed-window"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKey(_Strict):
    """One API key and the client name it authenticates as."""

    client: str = Field(min_length=1)
    key: SecretStr = Field(min_length=1)


class Route(_Strict):
    """Calls to ``service`` (a full gRPC service name) go to ``upstream``."""

    service: str = Field(min_length=1)
    upstream: Address

    @field_validator("service")
    @classmethod
    def _full_name(cls, value: str) -> str:
        if "/" in value or value.startswith(".") or value.endswith("."):
            raise ValueError(f"{value!r} is not a full service name such as 'shop.users.v1.UserService'")
        return value


class RateKey(_Strict):
    """What a rule's budget is counted per: the client, the peer, a metadata value or a request field."""

    kind: Literal["client", "peer", "metadata", "field"]
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> RateKey:
        kind, _, name = text.partition(":")
        if kind in ("client", "peer") and not name:
            return cls.model_validate({"kind": kind})
        if kind in ("metadata", "field") and name:
            if kind == "metadata" and name != name.lower():
                raise ValueError(f"metadata keys are lower case in gRPC: write 'metadata:{name.lower()}'")
            return cls.model_validate({"kind": kind, "name": name})
        raise ValueError(
            f"{text!r} is not a rate-limit key; use 'client', 'peer', 'metadata:NAME' or 'field:NAME'"
        )

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind


class Rule(_Strict):
    """A rate-limit rule. Every rule that covers a call must allow it."""

    name: str = ""
    rate: Rate
    strategy: Strategy = "moving-window"
    key: RateKey
    # Full service names, or /package.Service/Method paths; empty means every routed service.
    scope: tuple[str, ...] = ()
    # Another rate for some clients (client name -> rate), e.g. a premium key with a higher limit.
    overrides: dict[str, Rate] = Field(default_factory=dict)

    @field_validator("key", mode="before")
    @classmethod
    def _parse_key(cls, value: Any) -> Any:
        return RateKey.parse(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _default_name(self) -> Rule:
        if not self.name:
            object.__setattr__(self, "name", f"{self.rate} per {self.key}")
        return self


STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+cluster", "redis+sentinel")


class RateLimit(_Strict):
    # Where budgets live: memory:// (this process only) or a Redis URI shared by every replica.
    storage: str = "memory://"
    # What to do with a call when the storage fails or is slower than storage_timeout:
    # "allow" it (fail open, as Envoy and Kong do by default) or "deny" it with UNAVAILABLE.
    on_storage_error: Literal["allow", "deny"] = "allow"
    # Seconds a call may wait on the storage before the failure mode applies.
    storage_timeout: float = Field(default=0.05, gt=0, le=10)
    rules: tuple[Rule, ...] = ()

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        scheme, separator, _ = value.partition("://")
        if not separator or scheme not in STORAGE_SCHEMES:
            accepted = ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
            raise ValueError(f"{value!r} is not a storage URI this gateway knows; use one of {accepted}")
        return value

    @property
    def shared(self) -> bool:
        """Whether budgets are shared between processes (anything but memory://)."""
        return not self.storage.startswith("memory://")


class Reflection(_Strict):
    public: bool = False


class GatewayConfig(_Strict):
    listen: Address = "127.0.0.1:50050"
    # FileDescriptorSet files (protoc --include_imports --descriptor_set_out) for services from
    # outside this repository; this project's own services are always known.
    descriptor_sets: tuple[Path, ...] = ()
    # Seconds between health checks of each upstream.
    health_check_interval: float = Field(default=2.0, gt=0)
    # Seconds that in-flight calls get to finish on SIGTERM or SIGINT.
    shutdown_grace: float = Field(default=10.0, ge=0)
    api_keys: tuple[ApiKey, ...] = Field(min_length=1)
    routes: tuple[Route, ...] = Field(min_length=1)
    rate_limit: RateLimit = RateLimit()
    reflection: Reflection = Reflection()

    @field_validator("routes")
    @classmethod
    def _one_route_per_service(cls, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        seen: set[str] = set()
        for route in routes:
            if route.service in seen:
                raise ValueError(f"service {route.service!r} is routed twice")
            seen.add(route.service)
        return routes

    @field_validator("api_keys")
    @classmethod
    def _unique_keys(cls, keys: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        secrets = [k.key.get_secret_value() for k in keys]
        if len(set(secrets)) != len(secrets):
            raise ValueError("the same key is given for two clients")
        return keys


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _describe(error: ValidationError) -> str:
    problems = []
    items = error.errors()
    # A list whose items failed is also reported "too short"; that second message only misleads.
    failed_inside = {tuple(item["loc"][:-2]) for item in items if len(item["loc"]) > 1}
    for item in items:
        if item["type"] == "too_short" and tuple(item["loc"]) in failed_inside:
            continue
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        problems.append(f"{_field_path(item['loc'])}: {message}")
    return "; ".join(problems)


def parse_config(data: dict[str, Any], origin: str) -> GatewayConfig:
    """Validate already-parsed TOML data. Raises ConfigError naming each bad field."""
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
    base = Path(origin).parent
    resolved = tuple(p if p.is_absolute() else base / p for p in config.descriptor_sets)
    return config.model_copy(update={"descriptor_sets": resolved})


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a TOML config file. Relative paths in it are taken from its folder."""
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read the file ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML: {error}") from None
    return parse_config(data, str(path))
