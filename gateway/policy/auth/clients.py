"""Who may call what: the configured keys, read from wherever they live, as digests with their permissions.

Built once at start-up, before anything listens, so that a key that cannot be read or an ACL entry
that names nothing routed is a config error, not a surprise at the first call.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config.keys import is_written_digest, key_digest, key_problem, parse_written_digest
from gateway.config.schema import ApiKey, ConfigError
from gateway.routing.table import RouteTable


@dataclass(frozen=True)
class Client:
    """A verified caller: its name, and the method paths it may call (None: every one)."""

    name: str
    allowed: frozenset[str] | None = None

    def may_call(self, method: str) -> bool:
        return self.allowed is None or method in self.allowed


def _read_key(api_key: ApiKey, field: str, environ: Mapping[str, str]) -> str:
    if api_key.key is not None:
        return api_key.key.get_secret_value()
    if api_key.key_env is not None:
        value = environ.get(api_key.key_env)
        if value is None:
            raise ConfigError(f"{field}.key_env: the environment variable {api_key.key_env} is not set")
        return value
    path = Path(str(api_key.key_file))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{field}.key_file: cannot read {path} ({error.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{field}.key_file: {path} is not text") from None
    # Editors end files with a newline; the key is what comes before it.
    return text.removesuffix("\n").removesuffix("\r")


def _digest(api_key: ApiKey, field: str, environ: Mapping[str, str]) -> bytes:
    secret = _read_key(api_key, field, environ)
    if api_key.key is not None and is_written_digest(secret):
        return parse_written_digest(secret)  # validated with the config
    problem = key_problem(secret)
    if problem is not None:
        source = "key" if api_key.key is not None else ("key_env" if api_key.key_env else "key_file")
        raise ConfigError(f"{field}.{source}: {problem}")
    return key_digest(secret)


def named_methods(entries: Iterable[str], field: str, routes: RouteTable) -> set[str]:
    """The method paths that ``entries`` (full service names, /package.Service/Method paths) name.

    Raises:
        ConfigError: ``field[N]`` names nothing routed.
    """
    named: set[str] = set()
    for index, entry in enumerate(entries):
        if entry in routes.upstream_of:
            named.update(path for path in routes.methods if path.startswith(f"/{entry}/"))
        elif entry in routes.methods:
            named.add(entry)
        else:
            hint = " (a method is written /package.Service/Method)" if "/" in entry.strip("/") else ""
            raise ConfigError(
                f"{field}[{index}]: {entry!r} is neither a routed service nor a method of one{hint}; "
                f"routed services: {', '.join(sorted(routes.upstream_of))}"
            )
    return named


def _allowed_methods(
    api_key: ApiKey, field: str, routes: RouteTable, always: Iterable[str]
) -> frozenset[str] | None:
    if not api_key.allow:
        return None
    return frozenset({*always, *named_methods(api_key.allow, f"{field}.allow", routes)})


def load_clients(
    api_keys: Iterable[ApiKey],
    routes: RouteTable,
    always_allowed: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> dict[bytes, Client]:
    """Every key's digest and the client it authenticates.

    ``always_allowed`` are method paths every key may call whatever its ``allow`` says (the gateway's
    own reflection, say). Raises ConfigError naming the field: a key that cannot be read or is not
    usable, the same key twice, an ``allow`` entry that names nothing routed. No message shows a key.
    """
    environ = os.environ if environ is None else environ
    always = tuple(always_allowed)
    clients: dict[bytes, Client] = {}
    first_field: dict[bytes, str] = {}
    for index, api_key in enumerate(api_keys):
        field = f"api_keys[{index}]"
        digest = _digest(api_key, field, environ)
        if digest in clients:
            raise ConfigError(
                f"{field}: the same key as {first_field[digest]} (client {clients[digest].name!r}); "
                "give every client a key of its own"
            )
        clients[digest] = Client(api_key.client, _allowed_methods(api_key, field, routes, always))
        first_field[digest] = field
    return clients
