"""The pages a person opens: /docs, /redoc and the web demo at /, rendered in headless Chromium with the network
cut off, against a real `lrface serve` (embedded broker and worker) with API keys on."""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import httpx
import pytest

from browser import chromium, requests_outside, severe_console_errors
from service_helpers import HR_FACES, RAW_PHOTOS, REPO

pytestmark = [pytest.mark.browser, pytest.mark.process]

API_KEY = "demo-key-1234"
SCREENSHOT = REPO / "docs" / "demo.png"


SERVER_ON_TEST_REDIS = False  # the embedded broker, as `lrface serve` runs out of the box
SERVER_ENV = dict(LRFACE_API_KEYS=API_KEY, LRFACE_CHUNK_SIZE=2)


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=90, what="the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), f"timed out waiting for {what}")


def _operations(server) -> list[tuple[str, str]]:
    spec = httpx.get(server.base_url + "/openapi.json").json()
    return [(method.upper(), path) for path, item in spec["paths"].items() for method in item]


def test_swagger_ui_renders_every_operation_offline(server, browser):
    from selenium.webdriver.common.by import By

    operations = _operations(server)
    browser.get(server.base_url + "/docs")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= len(operations), what="Swagger UI")
    shown = {(b.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
              b.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"))
             for b in browser.find_elements(By.CSS_SELECTOR, ".opblock")}
    assert shown == set(operations)
    assert browser.find_element(By.CSS_SELECTOR, ".info .title").text.startswith("lrface")
    assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize")  # API keys are on: Swagger UI can send one
    assert requests_outside(browser, server.base_url) == []
    assert severe_console_errors(browser) == []


def test_redoc_renders_every_operation_offline(server, browser):
    from selenium.webdriver.common.by import By

    operations = _operations(server)
    browser.get(server.base_url + "/redoc")
    selector = "[data-section-id^='operation/']"
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, selector)) >= len(operations), what="ReDoc")
    assert len(browser.find_elements(By.CSS_SELECTOR, selector)) == len(operations)
    assert "LR variants of one face" in browser.find_element(By.TAG_NAME, "body").text
    assert requests_outside(browser, server.base_url) == []
    assert severe_console_errors(browser) == []


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def _status_settled(element_id: str):
    """A wait condition: the status line says something other than 'working…' (or is an error)."""
    def settled(d):
        text = _text(d, element_id)
        return text and "…" not in text and text

    return settled


def _decoded_images(driver, selector: str) -> list[dict]:
    """The images matching selector once each has finished loading: whether it decoded, and its natural size."""
    script = ("return Array.from(document.querySelectorAll(arguments[0])).map(i => "
              "({done: i.complete, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight}))")
    return _wait(driver, lambda d: (images := d.execute_script(script, selector)) and all(i["done"] for i in images)
                 and images, what=f"the images {selector} to load")


def test_web_demo_synthesizes_verifies_and_runs_a_job_with_an_api_key(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server.base_url + "/")
    assert browser.title == "lrface demo"
    key = browser.find_element(By.ID, "api-key")
    key.clear()

    # Without the key the API refuses, and the page says so.
    browser.find_element(By.ID, "verify-a").send_keys(str(HR_FACES[0]))
    browser.find_element(By.ID, "verify-b").send_keys(str(HR_FACES[0]))
    browser.find_element(By.ID, "verify-run").click()
    assert "401 unauthorized" in _wait(browser, _status_settled("verify-status"), what="the 401")
    key.send_keys(API_KEY)

    # 1. A raw photo: the face is detected and aligned, variants come at 3 heights, native and enlarged.
    browser.find_element(By.ID, "synth-image").send_keys(str(RAW_PHOTOS[0]))
    heights = browser.find_element(By.ID, "synth-heights")
    heights.clear()
    heights.send_keys("18,24,36")
    browser.find_element(By.ID, "synth-run").click()
    status = _wait(browser, _status_settled("synth-status"), what="the variants")
    assert status.startswith("seed 1;") and "face found" in status, status
    native = _decoded_images(browser, "#synth-gallery img.native")
    assert len(native) == 9 and all(i["ok"] for i in native), native
    assert sorted({i["h"] for i in native}) == [18, 24, 36]
    assert all(i["ok"] for i in _decoded_images(browser, "#synth-gallery img.enlarged"))
    (face,) = _decoded_images(browser, "#synth-face")
    assert face["ok"] and (face["w"], face["h"]) == (96, 112)
    _wait(browser, lambda d: d.execute_script("return document.getElementById('synth-photo').width") > 1, what="the photo")

    # Re-roll: a new seed, new variants.
    first = browser.execute_script("return Array.from(document.querySelectorAll('#synth-gallery img.native')).map(i => i.src)")
    browser.find_element(By.ID, "synth-reroll").click()
    _wait(browser, lambda d: (t := _text(d, "synth-status")).startswith("seed ") and not t.startswith("seed 1;"), what="re-roll")
    again = browser.execute_script("return Array.from(document.querySelectorAll('#synth-gallery img.native')).map(i => i.src)")
    assert len(again) == 9 and again != first
    assert all(i["ok"] for i in _decoded_images(browser, "#synth-gallery img.native"))

    # 2. Verify: the same face twice is the same person.
    browser.find_element(By.ID, "verify-run").click()
    _wait(browser, lambda d: d.find_element(By.ID, "verify-result").is_displayed(), what="the verify result")
    assert float(_text(browser, "verify-similarity")) == pytest.approx(1.0, abs=1e-3)
    assert 0 < float(_text(browser, "verify-threshold")) < 1
    assert _text(browser, "verify-decision") == "same person"
    full_status = _text(browser, "verify-status")
    # ... and with the lite embedder, chosen in the form: its own model answers.
    browser.execute_script("document.getElementById('verify-model').value = 'lite'")
    browser.find_element(By.ID, "verify-run").click()
    _wait(browser, lambda d: (t := _text(d, "verify-status")).startswith("model ") and t != full_status, what="lite")
    assert "lite" in _text(browser, "verify-status") and _text(browser, "verify-decision") == "same person"

    # 3. A job on a zip: the progress bar fills and the manifest is shown.
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in HR_FACES[:3]:
            zf.write(path, f"{path.parent.name}/{path.name}")
    browser.find_element(By.ID, "job-archive").send_keys(str(archive))
    browser.find_element(By.ID, "job-run").click()
    # (the final line, written once the manifest is fetched after the job succeeded)
    _wait(browser, lambda d: re.search(r": (succeeded, \d+ variants|failed|cancelled)\b", _text(d, "job-status")),
          timeout=180, what="the job")
    assert "succeeded, 6 variants" in _text(browser, "job-status")
    assert browser.execute_script("const p = document.getElementById('job-progress'); return [p.value, p.max]") == [3, 3]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#job-manifest tbody tr")) == 6

    assert requests_outside(browser, server.base_url) == []
    errors = [e for e in severe_console_errors(browser) if "401" not in e]  # (the refused call above)
    assert errors == []
    if os.environ.get("LRFACE_UPDATE_SCREENSHOT"):
        browser.execute_script("window.scrollTo(0, 0)")
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1100, min(height + 40, 2600))
        browser.save_screenshot(str(SCREENSHOT))
