"""End to end in a real headless Chromium (Debian's chromium + chromedriver, Selenium 4):
open the page with a token, answer with the keys, reload, check the database and the proposal.

Runs wherever Chromium is installed (``.ci/run`` installs it); skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from bow_gym.annotate.store import Store
from tests._annotate_support import PROJECT, ServerProcess, free_port

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium "
                    "chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1366,768"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(fn, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError("condition not met in the browser")


def _text(driver, element_id):
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def _answers(db):
    store = Store(db)
    try:
        return [tuple(r) for r in store.conn.execute(
            "SELECT e.answer, a.name, e.undone_at IS NOT NULL FROM events e JOIN annotators a "
            "ON a.id = e.annotator WHERE e.kind = 'answer' ORDER BY e.seq")]
    finally:
        store.close()


def _open_proposal(db):
    store = Store(db)
    try:
        row = store.conn.execute(
            "SELECT p.seq FROM events p WHERE p.kind = 'propose' AND p.undone_at IS NULL AND NOT "
            "EXISTS (SELECT 1 FROM events a WHERE a.proposal = p.seq AND a.undone_at IS NULL) "
            "ORDER BY p.seq DESC LIMIT 1").fetchone()
        return row[0]
    finally:
        store.close()


def test_keys_reload_and_database_in_chromium(tmp_path, browser):
    from selenium.webdriver.common.action_chains import ActionChains

    db = tmp_path / "p.db"
    store = Store(db)
    token = store.add_annotator("ana")
    store.close()
    server = ServerProcess(db, free_port(), "--limit", str(PROJECT["limit"]),
                           "--clicks-per-image", str(PROJECT["clicks_per_image"]),
                           "--set", "feature_cache='none'")
    with server:
        browser.get(f"{server.url}/#token={token}")
        _wait(lambda: "click 1 of 3" in _text(browser, "progress-text"))
        assert "token" not in browser.current_url  # taken from the address bar once
        assert _text(browser, "who") == "ana"

        def press(key, expect):
            ActionChains(browser).send_keys(key).perform()
            _wait(lambda: expect in _text(browser, "progress-text"))

        press("b", "click 2 of 3")
        press("w", "click 3 of 3")
        ActionChains(browser).send_keys(" ").perform()  # the before/after toggle
        _wait(lambda: "AFTER" in _text(browser, "view-badge"))
        press("b", "Image 2 of 6 · click 1 of 3")
        assert _answers(db) == [(1, "ana", 0), (-1, "ana", 0), (1, "ana", 0)]
        assert "1 done" in _text(browser, "progress-text")

        browser.refresh()  # the token stays in this browser; the same click comes back
        _wait(lambda: "Image 2 of 6 · click 1 of 3" in _text(browser, "progress-text"))
        shown = browser.execute_script("return state.task.proposal.id")
        assert shown == _open_proposal(db)

        press("u", "Image 1 of 6 · click 3 of 3")  # undo the answer that finished image 1
        assert _answers(db)[-1] == (1, "ana", 1)
        assert browser.execute_script("return state.task.proposal.id") == _open_proposal(db)
        press("s", "Image 2 of 6")  # skip image 1
        assert browser.find_element("id", "better").is_displayed()
        shot = tmp_path / "annotate.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        out = os.environ.get("BOW_GYM_SCREENSHOT_DIR")
        if out:
            shutil.copy(shot, Path(out) / "annotate_synthetic.png")
