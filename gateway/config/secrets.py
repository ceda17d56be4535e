"""How a value that may hold a secret is shown: in logs, errors, ``--check`` and metrics alike."""

from __future__ import annotations

HIDDEN = "***"


def shown_uri(uri: str) -> str:
    """``uri`` with the password of its user info replaced by ``***`` (``redis://:***@host:6379``).

    The user info ends at the last ``@``: a password may hold ``/`` or ``@`` that its writer did not
    percent-encode, and must not show through either way.
    """
    scheme, separator, rest = uri.partition("://")
    if not separator:  # not a URI (a mistyped scheme, say): all before the last "@" may be a password
        at = uri.rfind("@")
        return uri if at == -1 else f"{HIDDEN}@{uri[at + 1 :]}"
    at = rest.rfind("@")
    if at == -1:
        return uri
    user, colon, _ = rest[:at].partition(":")
    return f"{scheme}://{user}{':' + HIDDEN if colon else ''}@{rest[at + 1 :]}"
