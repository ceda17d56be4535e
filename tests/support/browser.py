"""A real browser for the tests: Debian's headless chromium, driven by selenium through chromium-driver
(both installed by .ci/run; without them, outside CI, the browser tests skip)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService

from tests.support.programs import required_program


@contextlib.contextmanager
def headless_chromium() -> Iterator[webdriver.Chrome]:
    chromium = required_program("chromium", "chromium")
    chromedriver = required_program("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # No background networking: this machine reaches no outside host, and chromium would keep trying.
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=DriverService(chromedriver))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
