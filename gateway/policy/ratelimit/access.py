"""From ``[rate_limit]``'s fields to what reaching Redis takes: passwords, read from the config or the
environment, and the TLS files of ``[rate_limit.tls]``, loaded once.

Read when the plan is built (at start-up, by ``--check`` and on every reload), so a variable that is
not set or a certificate that cannot be read is a config error naming the field, not a surprise at
the first call. No message here holds a password or a variable's value.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

from gateway.config.schema import ConfigError, RateLimit, RateLimitTls
from gateway.policy.ratelimit.connection import Tls
from gateway.policy.ratelimit.topology import Access


def _from_environment(field: str, variable: str, environ: Mapping[str, str]) -> str:
    value = environ.get(variable)
    if value is None:
        raise ConfigError(f"rate_limit.{field}: the environment variable {variable} is not set")
    if not value:
        raise ConfigError(f"rate_limit.{field}: the environment variable {variable} is empty")
    return value


def _tls(config: RateLimitTls) -> Tls:
    """With ``ca``, that CA alone is trusted (not the system's too), as for upstreams."""
    try:
        context = ssl.create_default_context(cafile=config.ca)
    except OSError as error:  # ssl.SSLError included
        raise ConfigError(f"rate_limit.tls.ca: cannot load {config.ca} ({error.strerror or error})") from None
    if config.cert is not None and config.key is not None:
        try:
            # An encrypted key fails here, rather than OpenSSL asking for its passphrase on a terminal.
            context.load_cert_chain(config.cert, config.key, password=b"")
        except OSError as error:
            raise ConfigError(
                f"rate_limit.tls.cert: cannot load {config.cert} with its key {config.key} "
                f"({error.strerror or error})"
            ) from None
    files = [path for path in (config.ca, config.cert, config.key) if path is not None]
    return Tls(context, config.server_name, tuple((str(path), path.stat().st_mtime_ns) for path in files))


def access(config: RateLimit, environ: Mapping[str, str] | None = None) -> Access:
    """The passwords and TLS of ``config`` (the schema has checked which go together).

    Raises:
        ConfigError: a variable named is not set (or empty), or a TLS file cannot be loaded.
    """
    environ = os.environ if environ is None else environ
    password = None
    if config.password_env is not None:
        password = _from_environment("password_env", config.password_env, environ)
    sentinel_password = None
    if config.sentinel_password is not None:
        sentinel_password = config.sentinel_password.get_secret_value()
    elif config.sentinel_password_env is not None:
        sentinel_password = _from_environment("sentinel_password_env", config.sentinel_password_env, environ)
    return Access(password, sentinel_password, _tls(config.tls) if config.tls is not None else None)
