"""The gateway's configuration: one TOML file, validated into typed objects at start-up."""

from __future__ import annotations

import ipaddress
import json
import re
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
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.config.keys import is_written_digest, key_problem, parse_written_digest
from gateway.config.secrets import shown_uri
from runtime.addresses import parse_host_port

REFERENCE_CONFIG = Path(__file__).with_name("reference.toml")
# The JSON Schema of the config, for editors; `make schema` writes it (json_schema_text).
JSON_SCHEMA_FILE = Path(__file__).with_name("gateway.schema.json")


class ConfigError(Exception):
    """The configuration is unusable; each problem names its field and what is wrong."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


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


def _config_relative(value: Path, info: ValidationInfo) -> Path:
    """A relative path is taken from the config file's folder (passed as validation context)."""
    folder = (info.context or {}).get("config_folder")
    return value if value.is_absolute() or folder is None else Path(folder) / value


# A file named in the config: relative paths are taken from the config's folder.
ConfigPath = Annotated[Path, AfterValidator(_config_relative)]


def _printable(value: str) -> str:
    if not (value.isascii() and value.isprintable()) or value != value.strip():
        raise ValueError(
            f"{value!r} must be printable ASCII without surrounding spaces (it travels in gRPC metadata)"
        )
    return value


class ApiKey(_Strict):
    """One API key: where it comes from, the client name it authenticates as, and what it may call."""

    # Forwarded to upstreams as x-client-id, so it must be a valid metadata value.
    client: Annotated[
        str,
        Field(
            min_length=1,
            description="The client name the key authenticates as: sent upstream as `x-client-id`, "
            "written in the access log, and what `overrides` and the rate-limit key `client` name. "
            "Printable ASCII without surrounding spaces.",
        ),
        AfterValidator(_printable),
    ]
    key: SecretStr | None = Field(
        default=None,
        description='The key, or better its digest written `"sha256:<64 hex digits>"` '
        "(`grpc-gateway hash-key` prints it), so that the file holds nothing a caller could send. "
        "Give exactly one of `key`, `key_env` and `key_file`.",
    )
    key_env: str | None = Field(
        default=None,
        min_length=1,
        description="The name of an environment variable holding the key (a secret the orchestrator "
        "injects, say).",
    )
    key_file: ConfigPath | None = Field(
        default=None,
        description="A file holding the key (one trailing newline is ignored); keep it `chmod 600`.",
    )
    allow: tuple[str, ...] = Field(
        default=(),
        description="Full service names and `/package.Service/Method` paths this key may call; any "
        "other method is `PERMISSION_DENIED`, before the rate limiter, so it spends no budget. Empty: "
        "every routed service. Health and reflection stay open to every key.",
    )

    @field_validator("key")
    @classmethod
    def _usable_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        if is_written_digest(text):
            parse_written_digest(text)
        elif (problem := key_problem(text)) is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        given = [name for name in ("key", "key_env", "key_file") if getattr(self, name) is not None]
        if len(given) != 1:
            found = f"got {' and '.join(given)}" if given else "got none"
            raise ValueError(f"give exactly one of key, key_env or key_file ({found})")
        return self


class UpstreamTls(_Strict):
    """TLS to an upstream: the CA to trust, and the gateway's own certificate if the upstream asks for one."""

    ca: ConfigPath | None = Field(
        default=None,
        description="PEM file of the CA certificates that sign the upstream's certificate. Unset: the "
        "system's CAs.",
    )
    cert: ConfigPath | None = Field(
        default=None,
        description="The gateway's client certificate (PEM), for an upstream that wants mTLS; give "
        "`key` with it.",
    )
    key: ConfigPath | None = Field(default=None, description="The unencrypted private key of `cert` (PEM).")
    server_name: str = Field(
        default="",
        description="The name the upstream's certificate must carry, when it is not the host of the "
        "route's address.",
    )

    @model_validator(mode="after")
    def _cert_with_key(self) -> UpstreamTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key (the gateway's client certificate), or neither")
        return self


class RetryPolicy(_Strict):
    """Retries of a route's idempotent methods, as gRPC's ``retryPolicy`` defines them: an attempt that
    fails ``UNAVAILABLE`` before the upstream has sent reply headers is sent again, with exponential
    backoff, never past the call's deadline, and throttled per upstream while most attempts fail."""

    methods: tuple[str, ...] = Field(
        min_length=1,
        description="The route's methods that are safe to send twice, by short name "
        '(`["GetUser"]`); only these are retried. The upstream sees `grpc-previous-rpc-attempts` on '
        "a retry.",
    )
    # gRPC's retryPolicy allows at most 5.
    max_attempts: int = Field(default=3, ge=2, le=5, description="Attempts in all, the first included.")
    initial_backoff: float = Field(
        default=0.05,
        gt=0,
        le=60,
        description="Seconds before the first retry (randomised, as gRPC does).",
    )
    max_backoff: float = Field(
        default=1.0, gt=0, le=300, description="The longest wait before a retry, in seconds."
    )
    backoff_multiplier: float = Field(
        default=2.0,
        ge=1,
        le=10,
        description="How many times longer each wait may be than the one before.",
    )


def _ip_literal(address: str) -> int:
    """4 or 6 for an IPv4 or IPv6 literal address, 0 for a host name."""
    host, _ = parse_host_port(address)
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


class Route(_Strict):
    """Calls to ``service`` (a full gRPC service name) go to ``upstream``, or round-robin to ``upstreams``."""

    service: str = Field(
        min_length=1,
        description="The full gRPC service name the route serves, `package.Service` "
        "(`shop.users.v1.UserService`). Its descriptor comes from this project's generated code or "
        "from `descriptor_sets`.",
    )
    # After validation it names the upstream either way (the ``upstreams`` joined by commas when those
    # are given): one name, one channel.
    upstream: Address = Field(
        default="",
        description="The upstream's `HOST:PORT`. A host name is resolved, and every address it "
        "resolves to is balanced. Give this or `upstreams`.",
    )
    # Filled from ``upstream`` when that is given, so code reads the addresses here.
    upstreams: tuple[Address, ...] = Field(
        default=(),
        description="Several IP addresses of one family, "
        '`["10.0.0.5:50051", "10.0.0.6:50051"]`, balanced round-robin; an address that is down is '
        "skipped while it is down. Give this or `upstream`.",
    )
    default_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a call of the route may take when the caller sets no deadline (streams "
        "too: leave it unset for long-lived streams); then `DEADLINE_EXCEEDED`. A caller's own "
        "deadline always wins. Unset: no limit.",
    )
    retry: RetryPolicy | None = Field(
        default=None, description="Retries of the route's idempotent methods. Unset: no retries."
    )
    tls: UpstreamTls | None = Field(
        default=None,
        description="Reach the upstream over TLS; `tls = {}` trusts the system's CAs. Unset: plaintext.",
    )
    auth: tuple[Literal["api_key", "jwt"], ...] | None = Field(
        default=None,
        min_length=1,
        description='The credentials the route\'s calls may use: `["api_key"]`, `["jwt"]` or both. '
        "Unset: every kind the config has (`[[api_keys]]`, `[[auth.jwt]]`).",
    )

    @field_validator("auth")
    @classmethod
    def _each_kind_once(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("a kind of credential is listed twice")
        return value

    @field_validator("service")
    @classmethod
    def _full_name(cls, value: str) -> str:
        if "/" in value or value.startswith(".") or value.endswith("."):
            raise ValueError(f"{value!r} is not a full service name such as 'shop.users.v1.UserService'")
        return value

    @field_validator("upstreams")
    @classmethod
    def _balanceable(cls, addresses: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(addresses)) != len(addresses):
            raise ValueError("an address is listed twice")
        if len(addresses) > 1:
            # One grpc target ("ipv4:A,B") holds the list; it takes IP addresses of one family only.
            families = {_ip_literal(address) for address in addresses}
            if 0 in families:
                raise ValueError(
                    "list IP addresses (e.g. '10.0.0.5:50051') to balance between; a host name goes alone "
                    "(upstreams = ['users.internal:50051']) and every address it resolves to is balanced"
                )
            if len(families) > 1:
                raise ValueError("list IPv4 or IPv6 addresses, not both")
        return addresses

    @model_validator(mode="after")
    def _one_upstream_form(self) -> Route:
        if self.upstream and self.upstreams:
            raise ValueError("give upstream or upstreams, not both")
        if not self.upstream and not self.upstreams:
            raise ValueError(
                "no upstream: write upstream = 'HOST:PORT', or upstreams = ['HOST:PORT', ...] to balance"
            )
        if self.upstream:
            object.__setattr__(self, "upstreams", (self.upstream,))
        else:
            object.__setattr__(self, "upstream", ",".join(self.upstreams))
        return self


class RateKey(_Strict):
    """What a rule's budget is counted per: the client, the peer, a metadata value, a request field or
    a claim of the call's verified token (a dotted path into nested claims)."""

    kind: Literal["client", "peer", "metadata", "field", "claim"]
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> RateKey:
        kind, _, name = text.partition(":")
        if kind in ("client", "peer") and not name:
            return cls.model_validate({"kind": kind})
        if kind in ("metadata", "field", "claim") and name:
            if kind == "metadata" and name != name.lower():
                raise ValueError(f"metadata keys are lower case in gRPC: write 'metadata:{name.lower()}'")
            return cls.model_validate({"kind": kind, "name": name})
        raise ValueError(
            f"{text!r} is not a rate-limit key; use 'client', 'peer', 'metadata:NAME', 'field:NAME' "
            "or 'claim:NAME'"
        )

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind


class Rule(_Strict):
    """A rate-limit rule. Every rule that covers a call must allow it."""

    name: str = Field(
        default="",
        description="How refusals, `QuotaFailure` details and metrics name the rule. Unset: "
        '`"RATE per KEY"`, e.g. `"5/30 seconds per field:user_id"`. Budgets are kept by name and '
        "rate, so a reload that keeps both keeps what was spent.",
    )
    rate: Rate = Field(
        description='`COUNT/PERIOD` in the `limits` notation: `"5/30 seconds"`, `"1000/minute"`, `"10/hour"`.'
    )
    strategy: Strategy = Field(
        default="moving-window",
        description="`moving-window` (an exact sliding log), `sliding-window-counter` (an "
        "approximation in constant memory per key) or `fixed-window`.",
    )
    key: RateKey = Field(
        description="What the budget is counted per: `client` (the authenticated client), `peer` "
        "(the caller's host), `metadata:NAME` (a metadata value), `field:NAME` (a scalar field of the "
        "request, a stream's first message; when the method has no such field, or it is unset, the "
        "client's budget) or `claim:NAME` (a claim of the call's verified token, dotted paths into "
        "nested ones; without a token, the client's budget)."
    )
    scope: tuple[str, ...] = Field(
        default=(),
        description="Full service names and `/package.Service/Method` paths the rule covers. Empty: "
        "every routed service.",
    )
    overrides: dict[str, Rate] = Field(
        default_factory=dict,
        description="Another rate for some clients, by client name: "
        '`overrides = { premium = "100/30 seconds" }`.',
    )

    # The TOML form is a string ("field:user_id"): that is what editors are told (the JSON Schema).
    @field_validator(
        "key",
        mode="before",
        json_schema_input_type=Annotated[str, Field(pattern=r"^(client|peer|(metadata|field|claim):.+)$")],
    )
    @classmethod
    def _parse_key(cls, value: Any) -> Any:
        return RateKey.parse(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _default_name(self) -> Rule:
        if not self.name:
            object.__setattr__(self, "name", f"{self.rate} per {self.key}")
        return self


STORAGE_SCHEMES = (
    "memory", "redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"
)  # fmt: skip


class RateLimitTls(_Strict):
    """TLS to Redis (a rediss scheme): the CA to trust, and the gateway's certificate if Redis wants one."""

    ca: ConfigPath | None = Field(
        default=None,
        description="PEM file of the CA certificates that sign Redis's certificate. Unset: the system's CAs.",
    )
    cert: ConfigPath | None = Field(
        default=None,
        description="The gateway's client certificate (PEM), for a Redis with `tls-auth-clients`; "
        "give `key` with it.",
    )
    key: ConfigPath | None = Field(default=None, description="The unencrypted private key of `cert` (PEM).")
    server_name: str = Field(
        default="",
        description="The name every Redis server's certificate must carry, when it is not the host the "
        "gateway dials (the one in `storage`, or the address a Cluster's slot map or a sentinel gives).",
    )

    @model_validator(mode="after")
    def _cert_with_key(self) -> RateLimitTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key (the gateway's client certificate), or neither")
        return self


class RateLimit(_Strict):
    """Rate limiting: where budgets live, what a call gets when that store fails, and the rules."""

    storage: str = Field(
        default="memory://",
        description="Where budgets live: `memory://` (this process alone), or a Redis shared by every "
        "gateway pointed at it: `redis://[USER[:PASSWORD]@]HOST:PORT[/DB]`, "
        "`redis+cluster://H1:P1,H2:P2`, `redis+sentinel://H:P[,H:P]/SERVICE[/DB]`; `rediss` for "
        "`redis` (`rediss://`, `rediss+cluster://`, `rediss+sentinel://`) reaches every server over "
        "TLS, sentinels included. A password in it is shown `***` wherever the URI is printed.",
    )
    password_env: str | None = Field(
        default=None,
        min_length=1,
        description="The name of an environment variable holding the Redis password, so that the file "
        "holds none; the user is the URI's (`redis://USER@H:P`), else `default`. Not with a password "
        "in `storage`.",
    )
    sentinel_password: SecretStr | None = Field(
        default=None,
        description="Sentinel storage only: the sentinels' own password (their `requirepass`). Give "
        "this or `sentinel_password_env`.",
    )
    sentinel_password_env: str | None = Field(
        default=None,
        min_length=1,
        description="Sentinel storage only: the name of an environment variable holding the "
        "sentinels' password.",
    )
    tls: RateLimitTls | None = Field(
        default=None,
        description="TLS storage only (a rediss scheme): the CA, the gateway's client certificate and "
        "the server name. "
        "Unset: the system's CAs.",
    )
    on_storage_error: Literal["allow", "deny", "local"] = Field(
        default="allow",
        description="What a call gets when the store fails or answers later than `storage_timeout`: "
        '`allow` (fail open, as Envoy and Kong do by default), `deny` (`UNAVAILABLE` "rate-limit '
        "store unavailable\") or `local` (counted in this process against the rule's rate divided by "
        "`replicas`).",
    )
    storage_timeout: float = Field(
        default=0.05,
        gt=0,
        le=10,
        description="Seconds a call may wait on a network store, all its rules together and "
        "reconnecting included; then `on_storage_error` applies.",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=10000,
        description="How many gateway processes share the store (replicas times `--workers`). With "
        '`on_storage_error = "local"` each counts `rate // replicas` while the store is down, so that '
        "together they let at most the rate through; a rate smaller than `replicas` is then a config "
        "error.",
    )
    rules: tuple[Rule, ...] = Field(
        default=(), description="The rate-limit rules. Every rule that covers a call must allow it."
    )

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        scheme, separator, _ = value.partition("://")
        if not separator or scheme not in STORAGE_SCHEMES:
            accepted = ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
            raise ValueError(
                f"{shown_uri(value)!r} is not a storage URI this gateway knows; use one of {accepted}"
            )
        return value

    @model_validator(mode="after")
    def _access_fits_the_storage(self) -> RateLimit:
        scheme = self.storage.partition("://")[0]
        shown = shown_uri(self.storage)
        given = [
            name
            for name in ("password_env", "sentinel_password", "sentinel_password_env", "tls")
            if getattr(self, name) is not None
        ]
        if given and scheme == "memory":
            raise ValueError(f"{', '.join(given)}: only for a Redis storage, and storage is {shown!r}")
        if self.password_env is not None and self._uri_has_password(self.storage):
            raise ValueError(
                f"password_env and the password in storage ({shown!r}) are two passwords: give one of them"
            )
        if self.sentinel_password is not None and self.sentinel_password_env is not None:
            raise ValueError("sentinel_password and sentinel_password_env: give one of them, not both")
        sentinel = [name for name in given if name.startswith("sentinel_")]
        if sentinel and not scheme.endswith("+sentinel"):
            raise ValueError(
                f"{sentinel[0]}: only for a redis+sentinel:// or rediss+sentinel:// storage, "
                f"and storage is {shown!r}"
            )
        if self.tls is not None and not scheme.startswith("rediss"):
            raise ValueError(
                "tls: only for a TLS storage (rediss://, rediss+cluster://, rediss+sentinel://), "
                f"and storage is {shown!r}"
            )
        return self

    @staticmethod
    def _uri_has_password(uri: str) -> bool:
        """Whether ``uri`` holds a password, read as shown_uri reads it (user info up to the last @)."""
        rest = uri.partition("://")[2]
        at = rest.rfind("@")
        return at >= 0 and bool(rest[:at].partition(":")[2])

    @property
    def shared(self) -> bool:
        """Whether budgets are shared between processes (anything but memory://)."""
        return not self.storage.startswith("memory://")


class Reflection(_Strict):
    """Server reflection (v1 and v1alpha), answered by the gateway itself for every routed service,
    with the proto comments, so that grpcurl and other tools can list and describe them."""

    enabled: bool = Field(default=True, description="Serve reflection at all.")
    public: bool = Field(
        default=False,
        description="Describe every routed service to callers without credentials. Otherwise a caller "
        "without a key or token is told about health only, and nothing when `[health] public` is "
        "false.",
    )

    @model_validator(mode="after")
    def _enabled_if_public(self) -> Reflection:
        if self.public and not self.enabled:
            raise ValueError("public = true needs enabled = true")
        return self


class Health(_Strict):
    """The standard health service, ``grpc.health.v1``: the gateway's own status, and each routed
    service's as its upstream reports it (checked in the background, never per call)."""

    public: bool = Field(
        default=True,
        description="Answer health checks without a key, for load balancers and orchestrators, which "
        "have none; `false`: a key is needed, as for any call.",
    )


class ServerTls(_Strict):
    """TLS on the gateway's listener; with ``client_ca``, clients must show a certificate it signed (mTLS)."""

    cert: ConfigPath = Field(description="The listener's PEM certificate chain.")
    key: ConfigPath = Field(description="The unencrypted private key of `cert` (PEM).")
    client_ca: ConfigPath | None = Field(
        default=None,
        description="PEM CA bundle; when set, every client must present a certificate it signed (mTLS).",
    )


# What a JWT may be signed with: public-key algorithms with keys from a JWKS, HS256 with a shared secret.
JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256"]
# A claim's name, or a dotted path into nested claims ("realm_access.roles").
ClaimPath = Annotated[str, Field(pattern=r"^[^.\s]+(\.[^.\s]+)*$")]


class ClaimRule(_Strict):
    """A claim a token must carry to call ``methods``: ``contains`` a value (a list claim, or a
    space-separated string such as ``scope``), or ``equals`` one."""

    claim: ClaimPath = Field(
        description="The claim's name, or a dotted path into nested claims (`realm_access.roles`)."
    )
    contains: str | None = Field(
        default=None,
        description="A value the claim must contain: an item of a list claim, or a word of a "
        "space-separated string such as `scope`. Give this or `equals`.",
    )
    equals: str | int | bool | None = Field(default=None, description="A value the claim must equal.")
    methods: tuple[str, ...] = Field(
        default=(),
        description="Full service names and `/package.Service/Method` paths the rule guards. Empty: "
        "every routed method.",
    )

    @model_validator(mode="after")
    def _one_test(self) -> ClaimRule:
        if (self.contains is None) == (self.equals is None):
            raise ValueError("give exactly one of contains or equals")
        return self


class JwtProvider(_Strict):
    """An issuer of JWTs the gateway accepts, and where its keys come from (see gateway/policy/auth/jwt/)."""

    issuer: str = Field(min_length=1, description="The issuer: the token's `iss`, exactly.")
    audiences: tuple[str, ...] = Field(
        min_length=1, description="The audiences accepted: the token's `aud` must name one of them."
    )
    jwks: str | None = Field(
        default=None,
        description="Where the issuer's public keys come from: an `http://` or `https://` URL, or a "
        "file (read again at every refresh). Unset, and no `secret_env`: the `jwks_uri` of "
        "`ISSUER/.well-known/openid-configuration` (OpenID Connect discovery).",
    )
    secret_env: str | None = Field(
        default=None,
        min_length=1,
        description="HS256 instead of a JWKS: the name of the environment variable holding the shared "
        "secret (at least 32 bytes), never the secret itself.",
    )
    algorithms: tuple[JwtAlgorithm, ...] = Field(
        default=(),
        description="The algorithms accepted; `HS256` only with `secret_env`, and then alone. Empty: "
        '`["RS256"]`, or `["HS256"]` with `secret_env`.',
    )
    clock_skew: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="Seconds of difference allowed between the issuer's clock and the gateway's, on "
        "`exp`, `nbf` and `iat`.",
    )
    token_from: str = Field(
        default="authorization",
        pattern=r"^[0-9a-z_.\-]+$",
        description="The metadata the token comes in: `authorization` holds `Bearer <token>`, any "
        "other key the token itself.",
    )
    client_claim: ClaimPath = Field(
        default="sub",
        description="The claim that names the client: `x-client-id` upstream, the rate-limit key "
        "`client`, `overrides`, the access log's `client`.",
    )
    forward_claims: tuple[ClaimPath, ...] = Field(
        default=(),
        description="Claims sent upstream as `x-jwt-<claim>` metadata (`email`, "
        "`realm_access.roles`): a string as it is, a list of strings joined by commas, anything else "
        "as compact JSON.",
    )
    forward_token: bool = Field(
        default=False, description="Send the token itself upstream too; by default it is not forwarded."
    )
    allow: tuple[ClaimRule, ...] = Field(
        default=(),
        description="Claims a token must carry to call some methods; a token that fails a rule covering "
        "the call is `PERMISSION_DENIED`.",
    )
    jwks_refresh: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="Seconds between refreshes of the keys; an answer's `Cache-Control: max-age` wins.",
    )
    jwks_min_refetch: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds between two fetches at least, whatever asks for them (tokens naming an "
        "unknown `kid`).",
    )
    jwks_timeout: float = Field(default=5.0, gt=0, le=60, description="Seconds one fetch may take.")
    stale_after: float = Field(
        default=86400.0,
        gt=0,
        description="Seconds the last good keys are used while fetches fail; then the issuer's tokens "
        "are refused `UNAVAILABLE`.",
    )
    jwks_cache: ConfigPath | None = Field(
        default=None,
        description="A file the last good JWKS is written to, and read at start when the issuer "
        "cannot be reached.",
    )

    @field_validator("jwks")
    @classmethod
    def _jwks_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value.startswith(("http://", "https://")):
            return value
        if "://" in value:
            raise ValueError(f"{value!r} is neither an http:// or https:// URL nor a file")
        return str(_config_relative(Path(value), info))

    @model_validator(mode="after")
    def _keys_fit_algorithms(self) -> JwtProvider:
        if self.secret_env is not None:
            if self.jwks is not None:
                raise ValueError("give jwks (public keys) or secret_env (an HS256 secret), not both")
            if self.algorithms not in ((), ("HS256",)):
                raise ValueError("a secret_env provider signs with HS256 only: algorithms = ['HS256']")
            object.__setattr__(self, "algorithms", ("HS256",))
            return self
        if "HS256" in self.algorithms:
            raise ValueError(
                "HS256 needs a shared secret (secret_env), and then no other algorithm; "
                "a JWKS holds public keys"
            )
        if not self.algorithms:
            object.__setattr__(self, "algorithms", ("RS256",))
        if self.jwks is None and not self.issuer.startswith(("http://", "https://")):
            raise ValueError(
                "no jwks: give its URL or file, or an http(s) issuer whose OpenID Connect discovery "
                "document names it"
            )
        return self


class Auth(_Strict):
    """Authentication besides the keys themselves: the lockout after invalid keys, and JWT issuers."""

    max_failures: int = Field(
        default=20,
        ge=0,
        description="Invalid keys from one address within `failure_window` after which every further "
        "call from it is refused, its key unread, until the window ends (IPv6 addresses count per "
        "/64). `0` turns the lockout off.",
    )
    failure_window: float = Field(
        default=60.0, gt=0, le=86400, description="Seconds, from an address's first invalid key."
    )
    jwt: tuple[JwtProvider, ...] = Field(
        default=(), description="Issuers of JWTs the gateway accepts beside API keys."
    )

    @field_validator("jwt")
    @classmethod
    def _one_provider_per_issuer(cls, providers: tuple[JwtProvider, ...]) -> tuple[JwtProvider, ...]:
        issuers = [provider.issuer for provider in providers]
        for issuer in issuers:
            if issuers.count(issuer) > 1:
                raise ValueError(f"issuer {issuer!r} has two providers; give each issuer one")
        return providers


class Limits(_Strict):
    """Sizes a request may not exceed: beyond them it is refused ``RESOURCE_EXHAUSTED`` (on the HTTP
    door 413 and 431)."""

    max_message_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=2**31 - 1,
        description="The largest request message, in bytes (gRPC's default); also once decompressed, "
        "so a gzip bomb is refused.",
    )
    max_metadata_bytes: int = Field(
        default=8 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="The largest request metadata, all headers of a call together, in bytes. 8 KiB is "
        "what a gRPC server with default settings (an upstream) always accepts; above it, up to 16 KiB, "
        "it refuses at random.",
    )


class AccessLog(_Strict):
    """One JSON line per call (see gateway/ops/accesslog.py)."""

    enabled: bool = Field(default=True, description="Write a line per call.")
    destination: str = Field(
        default="stderr",
        min_length=1,
        description="`stderr`, `stdout`, or a file the lines are appended to.",
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        description="The lines' level, in any case; none are written while `--log-level` is above it.",
    )

    @field_validator(
        "level",
        mode="before",
        json_schema_input_type=Literal[
            "DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"
        ],
    )
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("destination")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        if value in ("stderr", "stdout"):
            return value
        return str(_config_relative(Path(value), info))


class UpstreamKeepalive(_Strict):
    """HTTP/2 keepalive pings on upstream connections, so that a dead peer is noticed (grpc.keepalive_*)."""

    time: float = Field(
        default=300.0,
        ge=0,
        description="Seconds without activity on an upstream connection before a ping; `0`: no pings. "
        "A gRPC server refuses pings more often than every 5 minutes unless told otherwise "
        "(`grpc.http2.min_ping_interval_without_data_ms`) and closes the connection, so lower it only "
        "for upstreams that allow it.",
    )
    timeout: float = Field(
        default=20.0,
        gt=0,
        description="Seconds the ping's answer may take; then the connection is closed and its calls "
        "fail `UNAVAILABLE`.",
    )
    without_calls: bool = Field(
        default=False,
        description="Ping connections that carry no call too, so that an idle upstream is found dead "
        "before a call needs it.",
    )


class UpstreamReconnect(_Strict):
    """How soon grpc tries an upstream again after a connection to it failed (grpc's reconnect backoff)."""

    initial: float = Field(
        default=0.1,
        gt=0,
        le=60,
        description="Seconds before the first new attempt; each failure makes the next wait 1.6 times "
        "longer, up to `max`.",
    )
    max: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="The longest wait between attempts, in seconds: an upstream that comes back is used "
        "within about this long (gRPC alone waits up to 120 s).",
    )

    @model_validator(mode="after")
    def _initial_within_max(self) -> UpstreamReconnect:
        if self.initial > self.max:
            raise ValueError(f"initial ({self.initial}) is longer than max ({self.max})")
        return self


class HttpRoute(_Strict):
    """An HTTP route of the config's own (one that is in no proto): ``method path`` calls ``call``."""

    method: Literal["GET", "POST", "PUT", "DELETE", "PATCH"] = Field(
        description="The HTTP method, in any case."
    )
    path: str = Field(
        min_length=1, description="A `google.api.http` path template: `/api/users/users/{user_id}`."
    )
    call: str = Field(
        pattern=r"^/[^/]+/[^/]+$", description="The routed gRPC method it calls: `/package.Service/Method`."
    )
    body: str = Field(
        default="",
        description='As in `google.api.http`: `""` (no body: the fields come from the path and the '
        'query), `"*"` (the whole request) or the request field the body fills.',
    )
    response_body: str = Field(
        default="", description="The reply field that is the response's body. Empty: the whole reply."
    )

    @field_validator(
        "method",
        mode="before",
        json_schema_input_type=Literal[
            "GET", "POST", "PUT", "DELETE", "PATCH", "get", "post", "put", "delete", "patch"
        ],
    )
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


# An origin a page may call from: exact, with "*" for the port (any port, or none) or for the first
# labels of the host (any subdomain), or "*" alone (any origin).
_ORIGIN_PATTERN = re.compile(
    r"\*|https?://(\*\.)?([a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(:(\*|[0-9]{1,5}))?"
)
# An HTTP header name (RFC 9110's token), lower case.
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


def _origin_pattern(value: str) -> str:
    if not _ORIGIN_PATTERN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an origin; write scheme://host[:port] in lower case, e.g. "
            "'https://shop.example.com', 'http://127.0.0.1:*' (any port) or 'https://*.example.com' "
            "(any subdomain), or '*' for any origin"
        )
    return value


def _header_name(value: str) -> str:
    value = value.lower()
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP header name")
    return value


class Cors(_Strict):
    """CORS on the HTTP door: which other origins' web pages may call it (gRPC-Web and JSON alike).

    Off while ``allow_origins`` is empty. A preflight is answered by the gateway, without a key.
    """

    allow_origins: tuple[Annotated[str, AfterValidator(_origin_pattern)], ...] = Field(
        default=(),
        description='Origins whose pages may call the HTTP door: `"https://shop.example.com"`, '
        '`"http://127.0.0.1:*"` (any port), `"https://*.example.com"` (any subdomain) or `"*"` (any '
        "origin). Empty: CORS is off.",
    )
    allow_headers: tuple[Annotated[str, AfterValidator(_header_name)], ...] = Field(
        default=(),
        description="Request headers a page may send besides those always allowed: `content-type`, "
        "`x-grpc-web`, `x-user-agent`, `grpc-timeout`, `x-api-key`, `authorization`, `x-request-id`.",
    )
    max_age: int = Field(
        default=600,
        ge=0,
        le=86400,
        description="Seconds a browser may keep a preflight's answer (Chromium keeps it 2 hours at most).",
    )


class Http(_Strict):
    """The HTTP/JSON door: every routed method as JSON, through the same chain as gRPC calls."""

    listen: Address | None = Field(
        default=None,
        description="`HOST:PORT` of the HTTP door: JSON, gRPC-Web, `/openapi.json`, `/docs`, "
        "`/healthz` and `/readyz` (`--http-listen` overrides). Unset: no HTTP door.",
    )
    json_names: Literal["json", "proto"] = Field(
        default="json",
        description="Field names in replies: `json` (proto3 JSON's lowerCamelCase) or `proto` (as in "
        "the .proto). Requests may use either.",
    )
    default_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a call may take when the request has no `grpc-timeout` header (a route's "
        "own `default_timeout` wins). Unset: no limit.",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds a connection has to send a whole request head, from when it opens or from "
        "a request's first byte; then it is closed (slowloris, connections that never send).",
    )
    idle_timeout: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds a keep-alive connection may sit idle between requests; then it is closed. "
        "Behind a load balancer, set it above the balancer's own idle timeout.",
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        description="Open connections at most; one more is answered `503` with `Retry-After: 1` and "
        "closed. Unset: half the process's open-file limit (raised to its hard limit at start), at "
        "most 10,000.",
    )
    routes: tuple[HttpRoute, ...] = Field(default=(), description="HTTP routes that no proto has.")
    cors: Cors = Field(default=Cors(), description="Which other origins' web pages may call the door.")


class TracingTls(_Strict):
    """TLS to the trace collector: its CA (default: the system's), and a client certificate if it asks."""

    ca: ConfigPath | None = Field(
        default=None,
        description="PEM file of the CA certificates that sign the collector's certificate. Unset: the "
        "system's CAs.",
    )
    cert: ConfigPath | None = Field(
        default=None,
        description="A client certificate (PEM), for a collector that asks for one; give `key` with it.",
    )
    key: ConfigPath | None = Field(default=None, description="The unencrypted private key of `cert` (PEM).")

    @model_validator(mode="after")
    def _cert_with_key(self) -> TracingTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self


class Tracing(_Strict):
    """[tracing]: an OpenTelemetry span for every call, exported over OTLP. The standard OTEL_*
    variables fill in what it leaves out (gateway/ops/tracing.py); a field it sets wins."""

    endpoint: str | None = Field(
        default=None,
        min_length=1,
        description="The collector: `HOST:PORT` for OTLP/gRPC, a URL for `http/protobuf` "
        "(`http://HOST:4318/v1/traces`). Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, "
        "`OTEL_EXPORTER_OTLP_ENDPOINT`, else the local default.",
    )
    protocol: Literal["grpc", "http/protobuf"] = Field(
        default="grpc",
        description="`grpc` or `http/protobuf`. An `endpoint` given here is read with the protocol "
        "given here: the two go together. Unset, without `endpoint`: "
        "`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`.",
    )
    sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="The share of new traces kept; a caller's sampled flag is followed either way "
        "(parent-based). Unset: `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, else every trace.",
    )
    service_name: str = Field(
        default="grpc-gateway",
        min_length=1,
        description="The spans' `service.name`. Unset: `OTEL_SERVICE_NAME`, `service.name` in "
        "`OTEL_RESOURCE_ATTRIBUTES`, else `grpc-gateway`.",
    )
    headers: dict[str, Annotated[str, AfterValidator(_printable)]] = Field(
        default_factory=dict,
        description="Headers sent with every export (lower-case names), a collector's API key say; "
        "added to `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (or `OTEL_EXPORTER_OTLP_HEADERS`), a name given "
        "here winning. Their values are never logged.",
    )
    tls: TracingTls | None = Field(
        default=None,
        description="TLS to the collector. Unset: OTLP/gRPC is plaintext (an `https://` URL is TLS "
        "either way).",
    )
    export_timeout: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Seconds one export may take; then its spans are dropped (counted, logged).",
    )
    export_delay: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Seconds between exports (sooner when 512 spans are waiting).",
    )
    max_queued_spans: int = Field(
        default=2048,
        ge=1,
        le=1_000_000,
        description="Spans that may wait for the collector; past it new spans are dropped (counted, logged).",
    )

    @model_validator(mode="after")
    def _endpoint_of_protocol(self) -> Tracing:
        if self.endpoint is not None and self.protocol == "grpc":
            try:
                parse_host_port(self.endpoint)
            except ValueError as error:
                raise ValueError(f"endpoint: {error}") from None
        elif self.endpoint is not None and not re.match(r"^https?://[^/\s]+", self.endpoint):
            raise ValueError(
                f"endpoint: {self.endpoint!r} is not an http:// or https:// URL (http/protobuf takes one)"
            )
        for name in self.headers:
            if name != name.lower() or not re.match(r"^[a-z0-9-]+$", name):
                raise ValueError(f"headers: {name!r} is not a lower-case header name")
        return self


class StepConfig(_Strict):
    """A step of the user's own in the call chain (see gateway/call/step.py for the interface)."""

    use: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="The step's class, `\"package.module:Class\"`, importable from the gateway's "
        "environment.",
    )
    name: str = Field(
        default="",
        description="How errors, logs and other steps' `after` and `before` call it. Empty: the "
        "class's `name` attribute, or its class name.",
    )
    after: str | None = Field(
        default=None,
        description="The step it goes after: `metadata`, `auth`, `route`, `rate_limit`, or a step "
        "listed earlier. Give this or `before`.",
    )
    before: str | None = Field(
        default=None, description="The step it goes before, named as for `after`. Give this or `after`."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The class's keyword arguments; a class that rejects them (`TypeError`, "
        "`ValueError`) is a config error naming `steps[N].options`.",
    )
    timeout: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds an `async def` check may take; then the call is refused `UNAVAILABLE` "
        '"step NAME did not answer within T s".',
    )

    @model_validator(mode="after")
    def _one_place(self) -> StepConfig:
        if (self.after is None) == (self.before is None):
            raise ValueError("give exactly one of after or before: the step it goes next to")
        return self


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value))
    except ValueError as error:
        raise ValueError(f"{error}; write a network such as 10.0.0.0/8 or 2001:db8::/32") from None


class GatewayConfig(_Strict):
    """The gateway's configuration: one TOML file. Unknown fields are errors; relative paths in it are
    taken from the file's folder."""

    listen: Address = Field(
        default="127.0.0.1:50050",
        description="`HOST:PORT` the gRPC door listens on (`--listen` overrides).",
    )
    engine: Literal["native", "aio"] = Field(
        default="native",
        description="What carries the calls of the gRPC door: `native` (the native data plane in Rust, "
        "gateway/engines/native and native/) or `aio` (Python alone, on grpc.aio's public API). "
        "Same decisions, same replies; `--engine` overrides.",
    )
    descriptor_sets: tuple[Path, ...] = Field(
        default=(),
        description="FileDescriptorSet files (`protoc --include_imports --descriptor_set_out=…`) "
        "describing services from outside this repository; this project's own services are always "
        "known.",
    )
    health_check_interval: float = Field(
        default=2.0, gt=0, description="Seconds between health checks of each upstream."
    )
    shutdown_grace: float = Field(
        default=10.0,
        ge=0,
        description="Seconds that calls in flight get to finish after SIGTERM or SIGINT; then they are "
        "cancelled.",
    )
    # Whether there is a key or a provider is checked with the plan.
    api_keys: tuple[ApiKey, ...] = Field(
        default=(),
        description="API keys and the clients they authenticate: at least one, unless `[[auth.jwt]]` "
        "providers authenticate the calls.",
    )
    routes: tuple[Route, ...] = Field(
        min_length=1, description="Which upstream serves each gRPC service: at least one route."
    )
    rate_limit: RateLimit = Field(default=RateLimit(), description="Rate limits.")
    reflection: Reflection = Field(default=Reflection(), description="Server reflection.")
    health: Health = Field(default=Health(), description="The health service.")
    auth: Auth = Field(default=Auth(), description="The lockout after invalid keys, and JWT issuers.")
    tls: ServerTls | None = Field(
        default=None, description="TLS on the gRPC listener (and the HTTP door's). Unset: plaintext."
    )
    limits: Limits = Field(default=Limits(), description="Sizes a request may not exceed.")
    metrics_listen: Address | None = Field(
        default=None,
        description="`HOST:PORT` of the Prometheus listener: `GET /metrics`, `/healthz`, `/readyz` "
        "(`--metrics-listen` overrides, where a bare PORT means 127.0.0.1). Unset: no metrics.",
    )
    access_log: AccessLog = Field(default=AccessLog(), description="One JSON line per call.")
    upstream_keepalive: UpstreamKeepalive = Field(
        default=UpstreamKeepalive(), description="HTTP/2 pings on upstream connections."
    )
    upstream_reconnect: UpstreamReconnect = Field(
        default=UpstreamReconnect(), description="How soon an upstream is tried again after a failure."
    )
    steps: tuple[StepConfig, ...] = Field(
        default=(), description="Steps of your own, placed in the call chain."
    )
    http: Http = Field(default=Http(), description="The HTTP/JSON and gRPC-Web door.")
    tracing: Tracing | None = Field(
        default=None,
        description="OpenTelemetry tracing. Unset: tracing only when the `OTEL_*` variables name a "
        "collector.",
    )
    trusted_proxies: tuple[Annotated[str, AfterValidator(_network)], ...] = Field(
        default=(),
        description="Networks (CIDRs; a bare address is a /32 or /128) of the load balancers and "
        "proxies in front of the gateway: a call from one of them counts as the client its "
        "`X-Forwarded-For` or `Forwarded` header names. Empty: those headers are believed from no one.",
    )

    @field_validator("routes")
    @classmethod
    def _one_route_per_service(cls, routes: tuple[Route, ...]) -> tuple[Route, ...]:
        seen: set[str] = set()
        for route in routes:
            if route.service in seen:
                raise ValueError(f"service {route.service!r} is routed twice")
            seen.add(route.service)
        return routes


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _describe(error: ValidationError) -> list[str]:
    problems = []
    items = error.errors()
    # A list whose items failed is also reported "too short"; that second message only misleads.
    # (An item's own check, such as a route's, fails at the item's location, e.g. ("routes", 0).)
    failed_inside = {tuple(item["loc"][:end]) for item in items for end in range(1, len(item["loc"]))}
    for item in items:
        if item["type"] == "too_short" and tuple(item["loc"]) in failed_inside:
            continue
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        problems.append(f"{_field_path(item['loc'])}: {message}")
    return problems


def parse_config(data: dict[str, Any], origin: str) -> GatewayConfig:
    """Validate already-parsed TOML data. Raises ConfigError naming each bad field."""
    base = Path(origin).parent
    try:
        config = GatewayConfig.model_validate(data, context={"config_folder": base})
    except ValidationError as error:
        raise ConfigError(*_describe(error)) from None
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


def json_schema_text() -> str:
    """The JSON Schema of a config file, as ``make schema`` writes it to ``gateway.schema.json``.

    Editors complete and check a TOML file by it (Taplo's ``#:schema`` directive); it describes the
    file as written, so a rate-limit key is the string ``"field:user_id"``, not what it parses into.
    """
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **GatewayConfig.model_json_schema()}
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
