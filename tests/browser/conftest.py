"""A headless Chromium driven by Selenium, for the browser tests.

Debian's packages: ``apt-get install chromium chromium-driver`` (the
binaries at ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``, or where
``SYNCACHE_TEST_CHROMIUM`` / ``SYNCACHE_TEST_CHROMEDRIVER`` say). Selenium
is given both paths, so it never downloads a browser or a driver.

When either is missing the tests are skipped with the reason, unless
``SYNCACHE_TEST_REQUIRE`` is ``all`` or names ``browser`` (as CI sets it):
then they fail, as an unavailable cache backend does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests.harness.backends import REQUIRE_ENV, is_required

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = os.environ.get("SYNCACHE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SYNCACHE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL_HINT = "apt-get install chromium chromium-driver"


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    missing = [
        path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)
    ]
    if missing:
        return f"{' and '.join(missing)} not found: {INSTALL_HINT}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed: pip install -e ".[test]"'
    return None


def skip_or_fail_browser(reason: str) -> NoReturn:
    """Skip, or fail when ``SYNCACHE_TEST_REQUIRE`` requires the browser."""
    if is_required("browser"):
        pytest.fail(
            f"browser unavailable but required by {REQUIRE_ENV}: {reason}",
            pytrace=False,
        )
    pytest.skip(f"browser unavailable: {reason}")


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    """One headless Chromium for the module's tests (about 1 s to start)."""
    reason = browser_unavailable()
    if reason is not None:
        skip_or_fail_browser(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    # No speculative connections: an idle one would hold a sync worker of the
    # test's server, whose shutdown then waits for its graceful timeout.
    options.add_experimental_option("prefs", {"net.network_prediction_options": 2})
    driver = webdriver.Chrome(
        service=Service(executable_path=CHROMEDRIVER), options=options
    )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium: WebDriver) -> Iterator[WebDriver]:
    """The module's Chromium, without the cookies of an earlier test (cookies
    ignore the port: every test's server is on 127.0.0.1)."""
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    yield chromium
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
