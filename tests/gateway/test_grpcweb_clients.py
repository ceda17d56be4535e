"""gRPC-Web clients from npm against a real gateway: the example page in headless chromium, served from
another origin (so every call goes through CORS), and the same client under Node."""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from tests.gateway.configs import API_KEY, gateway_toml, write_config
from tests.gateway.conftest import Services
from tests.gateway.test_http_door import Doors, http_gateway
from tests.support.browser import headless_chromium
from tests.support.programs import required_program

# The same on either engine (tests/conftest.py).
pytestmark = pytest.mark.engine_neutral

PROJECT = Path(__file__).resolve().parents[2]
PAGE = PROJECT / "examples" / "web"
NODE_CLIENT = Path(__file__).with_name("grpcweb_client.mjs")
CORS = '\n[http]\n\n[http.cors]\nallow_origins = ["http://127.0.0.1:*"]\n'
RATE_LIMITED = "rate limit exceeded for user_id {user}: 5 per 30 seconds, retry in "


@pytest.fixture
def doors(services: Services, tmp_path: Path) -> Iterator[Doors]:
    """The reference rule (5 calls per user per 30 s); pages on 127.0.0.1, any port, may call."""
    with http_gateway(write_config(tmp_path, gateway_toml(services.routes) + CORS)) as started:
        yield started


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def page_server() -> Iterator[int]:
    """examples/web served on a port of its own: another origin than the gateway's."""
    handler = functools.partial(_QuietHandler, directory=str(PAGE))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium() as driver:
        yield driver


def test_the_example_page_calls_from_another_origin(doors: Doors, browser: webdriver.Chrome) -> None:
    wait = WebDriverWait(browser, 20)

    def output(element: str, until: str) -> str:
        wait.until(lambda _: until in browser.find_element(By.ID, element).text)
        return str(browser.find_element(By.ID, element).text)

    with page_server() as port:
        page = f"http://127.0.0.1:{port}"
        assert not doors.http.startswith(page)
        browser.get(f"{page}/index.html?gateway={doors.http}")
        browser.find_element(By.ID, "key").send_keys(API_KEY)
        browser.find_element(By.ID, "get-user").click()
        assert output("user", "Atul") == "101 Atul (premium)"
        browser.find_element(By.ID, "list-users").click()
        listed = output("users", "(end of stream)")
        assert listed.splitlines() == ["101 Atul (premium)", "103 Aman (premium)", "(end of stream)"]
        # 101 spent one call: four more pass, the fifth is refused, and the page reads why and for how long.
        browser.find_element(By.ID, "until-refused").click()
        refused = output("refused", "call ")
        prefix = f"call 5: ResourceExhausted: {RATE_LIMITED.format(user=101)}"
        assert refused.startswith(prefix), refused
        seconds = refused.removeprefix(prefix).split(" s (retry after ")
        assert 1 <= int(seconds[0]) <= 30
        assert seconds[1] == f"{seconds[0]} s)"  # retry-after: readable only as a CORS-exposed header
        # The same page from an origin the config does not allow: the browser keeps the reply from it.
        browser.get(f"http://localhost:{port}/index.html?gateway={doors.http}")
        browser.find_element(By.ID, "key").send_keys(API_KEY)
        browser.find_element(By.ID, "get-user").click()
        blocked = output("user", ": ")
        assert "Atul" not in blocked
        assert blocked.startswith("Unknown: ")


def test_a_node_client_makes_the_same_calls(doors: Doors) -> None:
    node = required_program("node", "nodejs")
    result = subprocess.run(
        [node, str(NODE_CLIENT), doors.http, API_KEY],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    calls = json.loads(result.stdout)
    assert calls["user"] == {"userId": 101, "name": "Atul", "segment": "premium"}
    assert [user["name"] for user in calls["listed"]] == ["Atul", "Aman"]
    assert calls["arrived"] == ["Atul", "Aman"]
    assert calls["missing"] == {"code": "NotFound", "message": "user 999 not found", "retryAfter": None}
    refused = calls["refused"]
    assert (refused["call"], refused["code"]) == (6, "ResourceExhausted")
    assert refused["message"].startswith(RATE_LIMITED.format(user=102))
    assert 1 <= int(refused["retryAfter"]) <= 30
