"""Headless Chromium for end-to-end page tests: Debian's chromium + chromedriver, driven by Selenium.

Where they are missing, the fixture installs them with apt (root only) or skips the test with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Flags that keep Chromium quiet on a machine without a display or outside network.
LAUNCH_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1500")


def _install_chromium() -> str | None:
    """Install Debian's chromium and chromium-driver; the reason it could not, or None."""
    if shutil.which("apt-get") is None:
        return "Chromium is not installed and apt-get is not available to install it"
    if os.geteuid() != 0:
        return "Chromium is not installed (apt-get install chromium chromium-driver needs root)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            return f"`{' '.join(command)}` failed: {result.stderr.strip()[-300:]}"
    return None


class BrowserUnavailable(RuntimeError):
    """Chromium, its driver or Selenium is missing and cannot be installed here."""


def start_chromium(profile_dir: Path) -> object:
    """A Selenium driver of headless Debian Chromium with a fresh profile (installed first where needed)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BrowserUnavailable("selenium is not installed (pip install -e '.[dev]')") from None
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        reason = _install_chromium()
        if reason:
            raise BrowserUnavailable(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*LAUNCH_FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def chromium_driver(profile_dir: Path) -> Iterator[object]:
    """Fixture body: the driver, quit afterwards; the test is skipped with the reason where there is none."""
    try:
        driver = start_chromium(profile_dir)
    except BrowserUnavailable as reason:
        pytest.skip(str(reason))
    try:
        yield driver
    finally:
        driver.quit()


def upload_and_analyse(driver: object, url: str, image: Path, wait_s: float = 120) -> float:
    """Open the demo at ``url``, upload ``image``, press Analyse and wait for the overlay and the
    probabilities (or the error message); the seconds from the upload to the result."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    previous = driver.find_element(By.ID, "summary").text
    started = time.perf_counter()
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(image))
    WebDriverWait(driver, 60).until(lambda d: image.stem in d.find_element(By.ID, "upload").text)  # the upload is done
    driver.find_element(By.ID, "analyse").click()
    WebDriverWait(driver, wait_s).until(lambda d: d.find_element(By.ID, "summary").text != previous or _error_shown(d))
    return time.perf_counter() - started


def _error_shown(driver: object) -> bool:
    from selenium.webdriver.common.by import By

    return bool(driver.find_elements(By.CSS_SELECTOR, ".toast-body"))
