"""The status page in a real browser, served by a real server.

gunicorn serves ``tests.wsgi`` (one sync worker, the SQLite database cache
and the test database, as in ``tests/scenarios/test_server.py``); headless
Chromium, driven by Selenium, logs in through the admin's login form, reads
the table and clicks the buttons. The caches on the page are the server
worker's own: those ``tests/models.py`` declares.

Waiting is for elements, with a deadline (``WebDriverWait``), never by
sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client

from syncache.keys import make_cache_key
from syncache.medium import get_medium
from tests.harness.backends import Backend
from tests.models import PageTree
from tests.scenarios.test_server import Server, gunicorn

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

URL = "/admin/syncache/"
#: Seconds a page may take to appear after a navigation or a click.
WAIT = 30
#: The LocalSyncCache of tests/models.py the test clears.
CACHE_ID = "PageTree_absolute_url"


@pytest.fixture
def users(
    transactional_db: None, django_user_model: type[AbstractUser]
) -> dict[str, AbstractUser]:
    """Committed users the server can see: one staff, one not."""
    return {
        name: django_user_model.objects.create_user(
            name, password=f"pw-{name}", is_staff=name == "staff"
        )
        for name in ("staff", "visitor")
    }


@pytest.fixture
def server(backend: Backend, users: dict[str, AbstractUser]) -> Iterator[Server]:
    with gunicorn(backend, workers=1) as running:
        yield running


def wait_for(driver: WebDriver, css: str) -> WebElement:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        element: WebElement = WebDriverWait(driver, WAIT).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
        )
    except Exception as exc:
        raise AssertionError(
            f"{css!r} did not appear on {driver.current_url} within {WAIT}s; "
            f"the page says: {_text(driver)[:2000]}"
        ) from exc
    return element


def click_and_wait(driver: WebDriver, button: WebElement, css: str) -> WebElement:
    """Click, wait until the page was replaced, then for ``css`` on the new one."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    button.click()
    WebDriverWait(driver, WAIT).until(expected_conditions.staleness_of(button))
    return wait_for(driver, css)


def _text(driver: WebDriver) -> str:
    from selenium.webdriver.common.by import By

    text: str = driver.find_element(By.TAG_NAME, "body").text
    return text


def log_in(driver: WebDriver, base_url: str, name: str) -> None:
    """Fill and submit the admin's login form (we are on it)."""
    from selenium.webdriver.common.by import By

    wait_for(driver, "#login-form")
    driver.find_element(By.ID, "id_username").send_keys(name)
    driver.find_element(By.ID, "id_password").send_keys(f"pw-{name}")
    submit = driver.find_element(By.CSS_SELECTOR, "#login-form input[type=submit]")
    click_and_wait(driver, submit, "#content")


def cache_row(driver: WebDriver, cache_id: str) -> dict[str, Any]:
    """The cells of a LocalSyncCache's row, and its Clear button."""
    from selenium.webdriver.common.by import By

    row = wait_for(
        driver, f'#syncache-local tr[data-kind="local"][data-name="{cache_id}"]'
    )
    cells: dict[str, Any] = {
        cell.get_attribute("data-field"): cell.text
        for cell in row.find_elements(By.CSS_SELECTOR, "td[data-field]")
    }
    cells["button"] = row.find_element(By.CSS_SELECTOR, 'input[data-action="clear"]')
    return cells


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_staff_clear_a_cache_and_see_the_counters_change(
    backend: Backend, browser: WebDriver, server: Server
) -> None:
    from selenium.webdriver.common.by import By

    page = PageTree.objects.create(slug="home")
    # The worker computes the page's URL and keeps it in its cache.
    first = server.request(f"/page/{page.pk}/url/")
    assert (first["url"], first["cached"]) == ("/home/", True)

    browser.get(server.base_url + URL)
    log_in(browser, server.base_url, "staff")

    assert browser.current_url == server.base_url + URL
    pid = wait_for(browser, '#syncache-process [data-field="pid"]').text
    assert pid == str(first["pid"]), "the page shows the worker that serves it"
    before = cache_row(browser, CACHE_ID)
    assert (before["length"], before["own_clear_counter"]) == ("1", "0")
    assert before["state"] == "current"

    message = click_and_wait(browser, before["button"], ".messagelist .success")

    assert message.text.startswith(f"Cleared LocalSyncCache '{CACHE_ID}'")
    after = cache_row(browser, CACHE_ID)
    assert (after["length"], after["own_clear_counter"]) == ("0", "1")
    assert after["generation"] != before["generation"]
    assert after["last_cleared"].endswith(" s ago")
    # The page shows the generation stored in the shared cache...
    key = make_cache_key(CACHE_ID, prefix=backend.key_prefix + "!local")
    assert after["generation"] == str(get_medium().get(key))
    # ...and the worker really dropped the URL it held.
    again = server.request(f"/page/{page.pk}/url/")
    assert (again["pid"], again["was_cached"]) == (first["pid"], False)
    assert browser.find_elements(By.CSS_SELECTOR, ".errornote") == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_anonymous_and_non_staff_users_get_no_access(
    backend: Backend,
    browser: WebDriver,
    server: Server,
    users: dict[str, AbstractUser],
) -> None:
    from selenium.webdriver.common.by import By

    # Anonymous: the admin's login page, no table.
    browser.get(server.base_url + URL)
    wait_for(browser, "#login-form")
    assert browser.current_url == f"{server.base_url}/admin/login/?next={URL}"
    assert browser.find_elements(By.ID, "syncache-local") == []

    # The admin's login form refuses a user who is not staff.
    log_in(browser, server.base_url, "visitor")
    error = wait_for(browser, ".errornote")
    assert "staff account" in error.text
    assert browser.find_elements(By.ID, "syncache-local") == []

    # Logged in elsewhere on the site (a session of the test database): 403.
    client = Client()
    client.force_login(users["visitor"])
    browser.add_cookie(
        {"name": "sessionid", "value": client.cookies["sessionid"].value, "path": "/"}
    )
    browser.get(server.base_url + URL)
    heading = wait_for(browser, "h1")
    assert heading.text == "403 Forbidden"
    assert CACHE_ID not in _text(browser)
