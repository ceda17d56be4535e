"""The gateway's configuration: one TOML file, validated into typed objects at start-up."""

from __future__ import annotations

import ipaddress
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
    client: Annotated[str, Field(min_length=1), AfterValidator(_printable)]
    # Exactly one of: the key, or its digest written "sha256:<hex>" (`grpc-gateway hash-key` prints
    # it), so that the file holds no usable secret; an environment variable holding the key; a file
    # holding the key (one trailing newline is ignored).
    key: SecretStr | None = None
    key_env: str | None = Field(default=None, min_length=1)
    key_file: ConfigPath | None = None
    # Full service names and /package.Service/Method paths this key may call; empty: every routed one.
    allow: tuple[str, ...] = ()

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

    # PEM file of the CA certificates that sign the upstream's certificate; default: the system's.
    ca: ConfigPath | None = None
    # The gateway's client certificate and its private key, for an upstream that wants mTLS.
    cert: ConfigPath | None = None
    key: ConfigPath | None = None
    # The name the upstream's certificate must carry, when it is not the host of the upstream address.
    server_name: str = ""

    @model_validator(mode="after")
    def _cert_with_key(self) -> UpstreamTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key (the gateway's client certificate), or neither")
        return self


class RetryPolicy(_Strict):
    """Retries of a route's idempotent methods, done by grpc core (a service config ``retryPolicy``)."""

    # Methods of the route (short names, e.g. "GetUser") that are safe to send twice; only these are retried.
    methods: tuple[str, ...] = Field(min_length=1)
    # Attempts in all, the first included; grpc core allows at most 5.
    max_attempts: int = Field(default=3, ge=2, le=5)
    # Seconds before the first retry; each next one waits up to backoff_multiplier times longer.
    initial_backoff: float = Field(default=0.05, gt=0, le=60)
    max_backoff: float = Field(default=1.0, gt=0, le=300)
    backoff_multiplier: float = Field(default=2.0, ge=1, le=10)


def _ip_literal(address: str) -> int:
    """4 or 6 for an IPv4 or IPv6 literal address, 0 for a host name."""
    host, _ = parse_host_port(address)
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


class Route(_Strict):
    """Calls to ``service`` (a full gRPC service name) go to ``upstream``, or round-robin to ``upstreams``."""

    service: str = Field(min_length=1)
    # One address. After validation it names the upstream either way (the ``upstreams`` joined by
    # commas when those are given): one name, one channel.
    upstream: Address = ""
    # Several addresses of one upstream, balanced round-robin by grpc; one that is down is skipped.
    # Filled from ``upstream`` when that is given, so code reads the addresses here.
    upstreams: tuple[Address, ...] = ()
    # Seconds a call may take when the caller sets no deadline (streams too); none: no limit.
    default_timeout: float | None = Field(default=None, gt=0)
    retry: RetryPolicy | None = None
    # Reach the upstream over TLS (`tls = {}` trusts the system's CAs); plaintext when absent.
    tls: UpstreamTls | None = None
    # The credentials the route's calls may authenticate with: "api_key", "jwt" or both; none: every
    # kind the config has ([[api_keys]], [[auth.jwt]]).
    auth: tuple[Literal["api_key", "jwt"], ...] | None = Field(default=None, min_length=1)

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


class RateLimitTls(_Strict):
    """TLS to Redis (rediss://): the CA to trust, and the gateway's certificate if Redis asks for one."""

    # PEM file of the CA certificates that sign Redis's certificate; default: the system's.
    ca: ConfigPath | None = None
    # The gateway's client certificate and its (unencrypted) private key, for tls-auth-clients.
    cert: ConfigPath | None = None
    key: ConfigPath | None = None
    # The name Redis's certificate must carry, when it is not the host in the storage URI.
    server_name: str = ""

    @model_validator(mode="after")
    def _cert_with_key(self) -> RateLimitTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key (the gateway's client certificate), or neither")
        return self


class RateLimit(_Strict):
    # Where budgets live: memory:// (this process only) or a Redis URI shared by every replica. A
    # password in it (redis://USER:PASSWORD@H:P) is never shown: logs and errors print ***.
    storage: str = "memory://"
    # The name of an environment variable holding the Redis password, so that the file holds none;
    # instead of a password in storage (whose user, redis://USER@H:P, is used with it; else "default").
    password_env: str | None = Field(default=None, min_length=1)
    # redis+sentinel:// only: the sentinels' own password (their requirepass), written here or, so
    # that the file holds none, the name of an environment variable holding it; one of the two.
    sentinel_password: SecretStr | None = None
    sentinel_password_env: str | None = Field(default=None, min_length=1)
    # rediss:// only: the CA, client certificate and server name; without it, the system's CAs.
    tls: RateLimitTls | None = None
    # What to do with a call when the storage fails or is slower than storage_timeout:
    # "allow" it (fail open, as Envoy and Kong do by default), "deny" it with UNAVAILABLE, or
    # "local": count it in this process against the rule's rate divided by `replicas`.
    on_storage_error: Literal["allow", "deny", "local"] = "allow"
    # Seconds a call may wait on the storage before the failure mode applies.
    storage_timeout: float = Field(default=0.05, gt=0, le=10)
    # How many gateway processes share the storage (replicas times --workers): in "local" mode each
    # counts rate // replicas, so that together they let at most the rate through.
    replicas: int = Field(default=1, ge=1, le=10000)
    rules: tuple[Rule, ...] = ()

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
        if sentinel and scheme != "redis+sentinel":
            raise ValueError(f"{sentinel[0]}: only for a redis+sentinel:// storage, and storage is {shown!r}")
        if self.tls is not None and scheme != "rediss":
            raise ValueError(f"tls: only for a rediss:// storage (TLS to Redis), and storage is {shown!r}")
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
    # Serve reflection at all; and whether it needs a key (it lists and describes every routed service).
    enabled: bool = True
    public: bool = False

    @model_validator(mode="after")
    def _enabled_if_public(self) -> Reflection:
        if self.public and not self.enabled:
            raise ValueError("public = true needs enabled = true")
        return self


class Health(_Strict):
    # grpc.health.v1 without a key, for load balancers; false makes it need a key like any call.
    public: bool = True


class ServerTls(_Strict):
    """TLS on the gateway's listener; with ``client_ca``, clients must show a certificate it signed (mTLS)."""

    cert: ConfigPath
    key: ConfigPath
    client_ca: ConfigPath | None = None


# What a JWT may be signed with: public-key algorithms with keys from a JWKS, HS256 with a shared secret.
JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256"]
# A claim's name, or a dotted path into nested claims ("realm_access.roles").
ClaimPath = Annotated[str, Field(pattern=r"^[^.\s]+(\.[^.\s]+)*$")]


class ClaimRule(_Strict):
    """A claim a token must carry to call ``methods``: ``contains`` a value (a list claim, or a
    space-separated string such as ``scope``), or ``equals`` one."""

    claim: ClaimPath
    contains: str | None = None
    equals: str | int | bool | None = None
    # Full service names and /package.Service/Method paths it guards; empty: every routed method.
    methods: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_test(self) -> ClaimRule:
        if (self.contains is None) == (self.equals is None):
            raise ValueError("give exactly one of contains or equals")
        return self


class JwtProvider(_Strict):
    """An issuer of JWTs the gateway accepts, and where its keys come from (see gateway/policy/auth/jwt/)."""

    # The token's iss claim, exactly.
    issuer: str = Field(min_length=1)
    # The token's aud claim must name one of these.
    audiences: tuple[str, ...] = Field(min_length=1)
    # The JWKS: an http:// or https:// URL, or a file (relative: from the config's folder). None
    # (and no secret_env): the jwks_uri of the issuer's OpenID Connect discovery document.
    jwks: str | None = None
    # HS256 only: the environment variable that holds the shared secret (never the secret itself).
    secret_env: str | None = Field(default=None, min_length=1)
    # Default: RS256, or HS256 with secret_env.
    algorithms: tuple[JwtAlgorithm, ...] = ()
    # Seconds of difference allowed between the issuer's clock and the gateway's (exp, nbf, iat).
    clock_skew: float = Field(default=30.0, ge=0, le=600)
    # The metadata the token comes in: "authorization" holds "Bearer <token>"; any other key the token.
    token_from: str = Field(default="authorization", pattern=r"^[0-9a-z_.\-]+$")
    # The claim that names the client (x-client-id upstream, rate-limit key "client").
    client_claim: ClaimPath = "sub"
    # Claims sent upstream as x-jwt-<name> metadata ("email", "realm_access.roles").
    forward_claims: tuple[ClaimPath, ...] = ()
    # Send the token itself upstream too (by default it is not forwarded).
    forward_token: bool = False
    allow: tuple[ClaimRule, ...] = ()
    # Seconds between JWKS refreshes, unless the JWKS answer's Cache-Control max-age says otherwise.
    jwks_refresh: float = Field(default=300.0, gt=0, le=86400)
    # Seconds between two fetches at least, whatever asks for them (tokens naming an unknown kid).
    jwks_min_refetch: float = Field(default=10.0, gt=0, le=3600)
    # Seconds one fetch may take.
    jwks_timeout: float = Field(default=5.0, gt=0, le=60)
    # Seconds the last good keys are used while fetches fail; then tokens are refused UNAVAILABLE.
    stale_after: float = Field(default=86400.0, gt=0)
    # A file the last good JWKS is kept in, used at start when the issuer cannot be reached.
    jwks_cache: ConfigPath | None = None

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
    # After this many invalid keys from one address within failure_window seconds, every further call
    # from that address is refused without a key check until the window ends. 0 turns this off.
    max_failures: int = Field(default=20, ge=0)
    failure_window: float = Field(default=60.0, gt=0, le=86400)
    # Issuers of JWTs the gateway accepts beside API keys ([[auth.jwt]]).
    jwt: tuple[JwtProvider, ...] = ()

    @field_validator("jwt")
    @classmethod
    def _one_provider_per_issuer(cls, providers: tuple[JwtProvider, ...]) -> tuple[JwtProvider, ...]:
        issuers = [provider.issuer for provider in providers]
        for issuer in issuers:
            if issuers.count(issuer) > 1:
                raise ValueError(f"issuer {issuer!r} has two providers; give each issuer one")
        return providers


class Limits(_Strict):
    # Largest request message, in bytes (gRPC's default); a larger one is RESOURCE_EXHAUSTED.
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=2**31 - 1)
    # Largest request metadata (all headers of a call), in bytes; a larger one is RESOURCE_EXHAUSTED.
    # 8 KiB is what a gRPC server with default settings (an upstream) always accepts; above it, up to
    # 16 KiB, it refuses at random.
    max_metadata_bytes: int = Field(default=8 * 1024, ge=1024, le=1024 * 1024)


class AccessLog(_Strict):
    """One JSON line per call (see gateway/ops/accesslog.py)."""

    enabled: bool = True
    # "stderr", "stdout", or a file the lines are appended to (relative: from the config's folder).
    destination: str = Field(default="stderr", min_length=1)
    # The lines' log level: written only while --log-level lets this level through.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
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

    # Seconds without activity before a ping; 0 turns pings off. An upstream gRPC server refuses pings
    # more often than every 5 minutes (grpc.http2.min_ping_interval_without_data_ms) unless told otherwise.
    time: float = Field(default=300.0, ge=0)
    # Seconds to wait for the ping's answer before the connection is closed and its calls fail UNAVAILABLE.
    timeout: float = Field(default=20.0, gt=0)
    # Also ping connections that carry no call (an idle upstream is then found dead before a call needs it).
    without_calls: bool = False


class UpstreamReconnect(_Strict):
    """How soon grpc tries an upstream again after a connection to it failed (grpc's reconnect backoff)."""

    # Seconds before the first new attempt; each failure makes the next wait 1.6 times longer, to `max`.
    initial: float = Field(default=0.1, gt=0, le=60)
    # Seconds between attempts at most: an upstream that comes back is used within about this long.
    max: float = Field(default=2.0, gt=0, le=300)

    @model_validator(mode="after")
    def _initial_within_max(self) -> UpstreamReconnect:
        if self.initial > self.max:
            raise ValueError(f"initial ({self.initial}) is longer than max ({self.max})")
        return self


class HttpRoute(_Strict):
    """An HTTP route of the config's own (one that is in no proto): ``method path`` calls ``call``."""

    method: Literal["GET", "POST", "PUT", "DELETE", "PATCH"]
    # A google.api.http path template: /api/users/users/{user_id}
    path: str = Field(min_length=1)
    # The routed gRPC method it calls: /package.Service/Method
    call: str = Field(pattern=r"^/[^/]+/[^/]+$")
    # As in google.api.http: "" (no body; fields from the path and the query), "*" or one field.
    body: str = ""
    response_body: str = ""

    @field_validator("method", mode="before")
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

    allow_origins: tuple[Annotated[str, AfterValidator(_origin_pattern)], ...] = ()
    # Request headers a page may send besides those always allowed: content-type, x-grpc-web,
    # x-user-agent, grpc-timeout, x-api-key, authorization, x-request-id.
    allow_headers: tuple[Annotated[str, AfterValidator(_header_name)], ...] = ()
    # Seconds a browser may keep a preflight's answer (Chromium keeps it 2 hours at most).
    max_age: int = Field(default=600, ge=0, le=86400)


class Http(_Strict):
    """The HTTP/JSON door: every routed method as JSON, through the same chain as gRPC calls."""

    # HOST:PORT it listens on (--http-listen overrides); none: no HTTP door.
    listen: Address | None = None
    # JSON field names in replies: "json" (proto3's lowerCamelCase) or "proto" (as in the .proto).
    # Requests may use either.
    json_names: Literal["json", "proto"] = "json"
    # Seconds a call may take when the request sets no grpc-timeout header; none: no limit.
    default_timeout: float | None = Field(default=None, gt=0)
    # Seconds a connection has to send a whole request head, from when it opens or a request's first
    # byte; then it is closed (slowloris, connections that never send).
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    # Seconds a keep-alive connection may sit idle between requests; then it is closed. Behind a load
    # balancer, set it above the balancer's own idle timeout.
    idle_timeout: float = Field(default=5.0, gt=0, le=3600)
    # Open connections at most; a connection over it is answered 503 and closed. None: half the
    # process's open-file limit (raised to its hard limit at start), at most 10,000.
    max_connections: int | None = Field(default=None, ge=1)
    routes: tuple[HttpRoute, ...] = ()
    cors: Cors = Cors()


class TracingTls(_Strict):
    """TLS to the trace collector: its CA (default: the system's), and a client certificate if it asks."""

    ca: ConfigPath | None = None
    cert: ConfigPath | None = None
    key: ConfigPath | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> TracingTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self


class Tracing(_Strict):
    """[tracing]: an OpenTelemetry span for every call, exported over OTLP. The standard OTEL_*
    variables fill in what it leaves out (gateway/ops/tracing.py); a field it sets wins."""

    # OTLP/gRPC: the collector's HOST:PORT; http/protobuf: its URL (http://HOST:4318/v1/traces).
    # None: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, else the local default.
    endpoint: str | None = Field(default=None, min_length=1)
    # Unset: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL, else grpc. An endpoint
    # given here is read with the protocol given here (or grpc): the two go together.
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    # The share of new traces kept; a caller's sampled flag is followed either way (parent-based).
    # Unset: OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, else every trace (parent-based).
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    # Unset: OTEL_SERVICE_NAME, service.name in OTEL_RESOURCE_ATTRIBUTES, else grpc-gateway.
    service_name: str = Field(default="grpc-gateway", min_length=1)
    # Sent with every export, e.g. a collector's API key; over OTEL_EXPORTER_OTLP_TRACES_HEADERS
    # (or OTEL_EXPORTER_OTLP_HEADERS), a name given here winning.
    headers: dict[str, Annotated[str, AfterValidator(_printable)]] = Field(default_factory=dict)
    # TLS to the collector; without it OTLP/gRPC is plaintext (an https:// URL is TLS either way).
    tls: TracingTls | None = None
    # Seconds one export may take before its spans are dropped (counted, logged).
    export_timeout: float = Field(default=5.0, gt=0, le=60)
    # Seconds between exports (sooner when 512 spans are waiting).
    export_delay: float = Field(default=5.0, gt=0, le=60)
    # Spans that may wait for the collector; then new ones are dropped (counted, logged).
    max_queued_spans: int = Field(default=2048, ge=1, le=1_000_000)

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

    # "package.module:Class", importable from the gateway's environment; the class is built with
    # ``options`` as its keyword arguments.
    use: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    # How logs, errors and other steps' after/before call it; default: the class name.
    name: str = ""
    # Exactly one: the step it follows or precedes ("metadata", "auth", "route", "rate_limit", or a
    # user step listed earlier).
    after: str | None = None
    before: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # Seconds an ``async def`` check may take before its call is refused UNAVAILABLE.
    timeout: float = Field(default=1.0, gt=0, le=60)

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
    listen: Address = "127.0.0.1:50050"
    # What carries the calls: "native" (the native data plane: gateway/engines/native and native/)
    # or "aio" (Python only, on grpc.aio's public API). Same decisions, same replies; --engine overrides.
    engine: Literal["native", "aio"] = "native"
    # FileDescriptorSet files (protoc --include_imports --descriptor_set_out) for services from
    # outside this repository; this project's own services are always known.
    descriptor_sets: tuple[Path, ...] = ()
    # Seconds between health checks of each upstream.
    health_check_interval: float = Field(default=2.0, gt=0)
    # Seconds that in-flight calls get to finish on SIGTERM or SIGINT.
    shutdown_grace: float = Field(default=10.0, ge=0)
    # At least one key, unless [[auth.jwt]] providers authenticate the calls (checked with the plan).
    api_keys: tuple[ApiKey, ...] = ()
    routes: tuple[Route, ...] = Field(min_length=1)
    rate_limit: RateLimit = RateLimit()
    reflection: Reflection = Reflection()
    health: Health = Health()
    auth: Auth = Auth()
    # TLS on the listener; plaintext when absent.
    tls: ServerTls | None = None
    limits: Limits = Limits()
    # HOST:PORT of the Prometheus /metrics listener (--metrics-listen overrides); none: no metrics.
    metrics_listen: Address | None = None
    access_log: AccessLog = AccessLog()
    upstream_keepalive: UpstreamKeepalive = UpstreamKeepalive()
    upstream_reconnect: UpstreamReconnect = UpstreamReconnect()
    # Steps of the user's own, placed in the call chain.
    steps: tuple[StepConfig, ...] = ()
    http: Http = Http()
    tracing: Tracing | None = None
    # Networks (CIDRs) of the load balancers and proxies in front of the gateway: a call from one of
    # them counts as the client its X-Forwarded-For or Forwarded header names. Empty: those headers
    # are believed from no one.
    trusted_proxies: tuple[Annotated[str, AfterValidator(_network)], ...] = ()

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
