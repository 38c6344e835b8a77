"""Headless Chromium for the browser tests: Debian's `chromium` + `chromedriver` driven by Selenium, network cut off.

Nothing is downloaded at run time: the browser and its driver are the system's (`apt-get install chromium
chromium-driver`; `.ci/run` installs them). Every host name but the loopback resolves to nothing, and
`requests_outside` lists what a page asked for anywhere but the server under test, so a page that would need
a CDN fails its test.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def _first_existing(env_name: str, candidates) -> str | None:
    found = os.environ.get(env_name)
    if found:
        return found
    return next((c for c in candidates if Path(c).is_file()), None) or shutil.which(Path(candidates[0]).name)


def chromium(download_dir: Path | None = None):
    """A headless Chromium WebDriver with the network cut off (skips the test when there is no system Chromium)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    binary = _first_existing("LRFACE_TEST_CHROMIUM", CHROMIUM_CANDIDATES)
    driver_path = _first_existing("LRFACE_TEST_CHROMEDRIVER", CHROMEDRIVER_CANDIDATES)
    if not binary or not driver_path:
        pytest.skip("the browser tests need Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions",
                # no network but the machine itself: every other host name resolves to nothing
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    return driver


def requested_urls(driver) -> list[str]:
    """URLs the pages sent requests for since the last call (from Chromium's performance log); requests the
    page's Content-Security-Policy blocked before they were sent are left out."""
    sent, blocked = {}, set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif message.get("method") == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.add(params["requestId"])
    return [url for request_id, url in sent.items() if request_id not in blocked]


def requests_outside(driver, base_url: str) -> list[str]:
    """Requested URLs not served by base_url (data: and blob: URLs are the page's own)."""
    return [u for u in requested_urls(driver)
            if not (u.startswith(base_url + "/") or u == base_url or u.startswith(("data:", "blob:")))]


def severe_console_errors(driver) -> list[str]:
    """The pages' console errors, less reports of what the Content-Security-Policy kept from loading."""
    return [e["message"] for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and "Content Security Policy" not in e["message"]]
