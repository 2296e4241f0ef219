"""The web page in a real headless Chromium (selenium) against uvicorn on 127.0.0.1: query, results, playback."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest
import uvicorn

from retrieval.config import ServeConfig
from retrieval.serve import create_app

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium + chromium-driver (installed by `make venv` through APT_PACKAGES)",
)


@pytest.fixture(scope="module")
def server(served_index):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app({"demo": served_index}, ServeConfig())
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_type_a_query_see_results_and_play_one(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(server + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#index option"))
    browser.find_element(By.ID, "query").send_keys("a rising chirp")
    browser.find_element(By.ID, "search-button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 10)
    first = browser.find_elements(By.CSS_SELECTOR, "#results .result")[0]
    assert first.find_element(By.CSS_SELECTOR, ".score").text.startswith(("0.", "-0.", "1."))
    assert " s – " in first.find_element(By.CSS_SELECTOR, ".span").text
    assert "10 results from demo" in browser.find_element(By.ID, "status").text

    wait.until(ec.element_to_be_clickable(first.find_element(By.CSS_SELECTOR, "button.play"))).click()
    audio = first.find_element(By.TAG_NAME, "audio")
    wait.until(lambda d: d.execute_script("return arguments[0].currentTime > 0 && !arguments[0].paused", audio))
    assert browser.execute_script("return arguments[0].error", audio) is None
    assert first.find_element(By.CSS_SELECTOR, "button.play").text == "❚❚ Pause"


def test_search_by_uploading_a_clip(server, browser, collection):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    browser.find_element(By.ID, "clip").send_keys(str(collection["audio"] / "tone880.wav"))
    browser.find_element(By.ID, "clip-button").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .result"))
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .result .name")]
    assert names[0] == "tone880.wav"


def test_errors_are_shown_on_the_page(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    browser.find_element(By.ID, "clip-button").click()
    WebDriverWait(browser, 10).until(lambda d: "choose an audio file" in d.find_element(By.ID, "status").text)
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
