"""The notebook's scenario again, as a person types it: grpcurl against the gateway."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.processes import grpcurl

DATA = Path(__file__).with_name("data")
KEY = ("-H", "x-api-key: secret-key")


def call(gateway: str, method: str, body: str, *options: str) -> tuple[int, str]:
    result = grpcurl("-plaintext", *options, "-d", body, gateway, method)
    return result.returncode, result.stdout + result.stderr


def test_scenario_with_grpcurl(gateway: str) -> None:
    code, out = call(
        gateway, "shop.users.v1.UserService/GetUser", '{"user_id": 101}', "-H", "x-api-key: secret-key_1"
    )
    # grpcurl asks reflection first, and reflection is refused too.
    assert code != 0
    assert "code = Unauthenticated desc = failed to query for service descriptor" in out
    assert out.rstrip().endswith("invalid API key")

    code, out = call(gateway, "shop.users.v1.UserService/GetUser", '{"user_id": 104}', *KEY)
    assert code == 0, out
    assert json.loads(out) == {"userId": 104, "name": "Sean", "segment": "ultra luxury"}

    code, out = call(
        gateway, "shop.recommendations.v1.RecommendationService/GetRecommendations", '{"user_id": 103}', *KEY
    )
    assert code == 0, out
    assert json.loads(out) == {"userId": 103, "recommendations": ["T-shirt", "jeans", "shoes"]}

    outcomes = [
        call(gateway, "shop.users.v1.UserService/GetUser", '{"user_id": 103}', "-v", *KEY) for _ in range(5)
    ]
    # grpcurl exits with 64 + the gRPC status code: 72 is RESOURCE_EXHAUSTED (8).
    assert [code for code, _ in outcomes] == [0, 0, 0, 0, 72]
    refused = outcomes[-1][1]
    assert "Code: ResourceExhausted" in refused
    assert "Message: rate limit exceeded for user_id 103: 5 per 30 seconds, retry in " in refused
    assert "retry-after: " in refused
    assert "x-ratelimit-remaining: 0" in refused
    assert "x-ratelimit-remaining: 0" in outcomes[3][1]  # the fourth call passed with the last unit

    code, out = call(
        gateway,
        "shop.shoppers.v1.ShopService/GetShop",
        '{"shop_id": 1}',
        "-import-path",
        str(DATA),
        "-proto",
        "shoppers.proto",
        *KEY,
    )
    assert "Code: Unimplemented" in out
    assert "Message: service shop.shoppers.v1.ShopService is not routed by this gateway" in out
