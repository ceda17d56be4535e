"""/openapi.json and /docs on the HTTP door: the document, fuzzing driven by it, and a real browser."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.gateway.configs import gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.test_http_door import NOTEBOOK_ROUTES, Doors, http_gateway
from tests.support.browser import headless_chromium

# The same on either engine (tests/conftest.py).
pytestmark = pytest.mark.engine_neutral

# Budgets the fuzzer cannot spend out, so that every answer it sees is the door's or the service's.
ROOMY_RULE = '\n[[rate_limit.rules]]\nrate = "100000/second"\nkey = "field:user_id"\n'


@pytest.fixture
def roomy(services: Services, tmp_path: Path) -> Iterator[Doors]:
    config = write_config(tmp_path, gateway_toml(services.routes, rules=ROOMY_RULE) + NOTEBOOK_ROUTES)
    with http_gateway(config) as doors:
        yield doors


def test_the_document_describes_every_route(roomy: Doors) -> None:
    document = httpx.get(f"{roomy.http}/openapi.json", timeout=10).json()
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {
        "/v1/users/{user_id}",
        "/v1/users",
        "/v1/users/{user_id}/recommendations",
        "/v1/recommendations:group",
        "/v1/recommendations:stream",
        "/api/users/users/{user_id}",
        "/api/recommend/recommend/{user_id}",
    }
    get_user = document["paths"]["/v1/users/{user_id}"]["get"]
    assert get_user["operationId"] == "UserService_GetUser"
    assert get_user["description"].startswith("Returns one user. NOT_FOUND when no user has that id")
    assert get_user["parameters"] == [
        {"name": "user_id", "in": "path", "required": True, "schema": {"type": "integer", "format": "int32"}}
    ]
    assert get_user["responses"]["429"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/google.rpc.Status"
    }
    listing = document["paths"]["/v1/users"]["get"]
    assert [parameter["name"] for parameter in listing["parameters"]] == ["segment"]
    assert set(listing["responses"]["200"]["content"]) == {"application/x-ndjson", "text/event-stream"}
    user = document["components"]["schemas"]["shop.users.v1.User"]
    assert user["description"] == "A shopper."
    assert user["properties"]["segment"]["description"].startswith("The customer segment")
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
    }


def test_fuzzing_from_the_document_finds_no_server_error(roomy: Doors) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{roomy.http}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            "x-api-key: secret-key",
            "--max-examples",
            "30",
            "--request-timeout",
            "5",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.gateway.schemathesis_hooks"},
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Tested: 7" in result.stdout


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium() as driver:
        yield driver


def test_a_browser_calls_get_user_from_the_docs(roomy: Doors, browser: webdriver.Chrome) -> None:
    wait = WebDriverWait(browser, 20)
    browser.get(f"{roomy.http}/docs")
    # Authorize with the key, as a person does.
    wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "button.authorize"))).click()
    key_input = wait.until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux input"))
    )
    key_input.send_keys("secret-key")
    browser.find_element(By.CSS_SELECTOR, ".modal-ux .auth-btn-wrapper button.authorize").click()
    browser.find_element(By.CSS_SELECTOR, ".modal-ux button.btn-done").click()
    # Open GET /v1/users/{user_id}, give 101, execute.
    block = "//div[contains(@class, 'opblock-get')][.//*[@data-path='/v1/users/{user_id}']]"
    wait.until(
        expected_conditions.element_to_be_clickable(
            (By.XPATH, f"{block}//*[contains(@class, 'opblock-summary')]")
        )
    ).click()
    user_id = wait.until(
        expected_conditions.visibility_of_element_located(
            (By.XPATH, f"{block}//input[@placeholder='user_id']")
        )
    )
    user_id.send_keys("101")
    browser.find_element(By.XPATH, f"{block}//button[contains(@class, 'execute')]").click()
    body = wait.until(
        expected_conditions.visibility_of_element_located(
            (
                By.XPATH,
                f"{block}//*[contains(@class, 'live-responses-table')]"
                "//*[contains(@class, 'response-col_description')]//pre",
            )
        )
    )
    wait.until(lambda _: "Atul" in body.text)
    assert '"name": "Atul"' in body.text
    assert '"segment": "premium"' in body.text
