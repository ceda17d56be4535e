"""Gateway config files for tests, written as a user would write them."""

from __future__ import annotations

from pathlib import Path

USERS = "shop.users.v1.UserService"
RECOMMENDATIONS = "shop.recommendations.v1.RecommendationService"
API_KEY = "secret-key"

PER_USER_RULE = """
[[rate_limit.rules]]
name = "per-user"
rate = "5/30 seconds"
strategy = "moving-window"
key = "field:user_id"
"""


def gateway_toml(routes: dict[str, str], rules: str = PER_USER_RULE, extra: str = "") -> str:
    """A config with the demo key, ``routes`` (service -> upstream), ``rules`` and top-level ``extra``."""
    lines = [
        extra,
        "health_check_interval = 0.2",
        "",
        "[[api_keys]]",
        'client = "demo"',
        f'key = "{API_KEY}"',
    ]
    for service, upstream in routes.items():
        lines += ["", "[[routes]]", f'service = "{service}"', f'upstream = "{upstream}"']
    return "\n".join(lines) + "\n" + rules


def write_config(folder: Path, text: str, name: str = "gateway.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path
