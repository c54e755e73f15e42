"""The built-in chat page in a real browser: Debian's Chromium, headless, driven by selenium through
Debian's chromedriver, against a real server with the bundled SmolLM2.

The page streams a long reply (a model whose Modelfile sets num_predict 20000), is stopped mid-stream
(the server must see the client go and free its only slot), keeps its history across a reload,
renders code blocks without letting model text become markup, and attaches images for a vision
model (the tiny random projector).  Meanwhile clients probing ``GET /`` still read "Ollama is running".

Screenshots go to $CHAT_PAGE_ARTIFACTS (default tests/artifacts/, git-ignored).  Chromium and
chromedriver are Debian packages that ./dev test installs (scripts/test-deps.sh): without them
these tests fail, they never skip.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from appliance.assets.default_model import modelfile
from tests.conftest import ROOT, Server
from tests.fixtures.vision_images import png

BASE = "smollm2:135m"
STORYTELLER = "storyteller:latest"  # never stops on its own within a test: num_predict 20000
BRIEF = "brief:latest"  # a few tokens per answer
VISION = "smol-vision:latest"  # SmolLM2 plus the tiny random projector
LONG_PROMPT = "Write a long story about a dragon, with many chapters."
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,860")
#: Bounds for waits on the model (a load, a first token): generous, a busy neighbour slows all of it.
MODEL_WAIT_S = 240


def artifacts_dir() -> Path:
    path = Path(os.environ.get("CHAT_PAGE_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path,
                tiny_projector_gguf: Path) -> Iterator[Server]:
    """One slot, so a generation the server failed to cancel would hold back every later request."""
    server = Server(tmp_path_factory.mktemp("chat-page"), OLLAMA_NUM_PARALLEL="1", OLLAMA_KEEP_ALIVE="1h").start()
    server.import_smollm2(smollm2_gguf, BASE)
    models = {
        STORYTELLER: f"FROM {BASE}\nPARAMETER num_predict 20000\n",
        BRIEF: f"FROM {BASE}\nPARAMETER num_predict 6\nPARAMETER temperature 0\n",
        VISION: modelfile(smollm2_gguf) + f"FROM {tiny_projector_gguf}\nPARAMETER num_predict 4\n",
    }
    for name, text in models.items():
        path = server.home / f"{name.split(':')[0]}.Modelfile"
        path.write_text(text)
        server.cli("create", name, "-f", str(path))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.fail("the chat page tests need Debian's chromium and chromium-driver packages "
                    "(apt-get install -y chromium chromium-driver; ./dev test installs them)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=chromedriver, log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver, chat_server: Server) -> WebDriver:
    """The page, loaded fresh with an empty history."""
    browser.get(chat_server.url + "/")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    wait_for(browser, lambda: len(model_picker(browser).options) == 4, "the model picker fills from /api/tags")
    return browser


def wait_for(driver: WebDriver, condition: Callable[[], Any], what: str, timeout: float = MODEL_WAIT_S) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda _d: condition(), message=what)


def model_picker(driver: WebDriver) -> Select:
    return Select(driver.find_element(By.ID, "model"))


def pick(driver: WebDriver, model: str) -> None:
    model_picker(driver).select_by_value(model)
    picker = driver.find_element(By.ID, "model")
    wait_for(driver, lambda: picker.get_attribute("data-shown") == model, f"/api/show answered for {model}", 60)


def send(driver: WebDriver, text: str) -> WebElement:
    """Type and send ``text``; the reply element that the page adds for it."""
    before = len(replies(driver))
    driver.find_element(By.ID, "prompt").send_keys(text)
    driver.find_element(By.ID, "send").click()
    wait_for(driver, lambda: len(replies(driver)) == before + 1, "a reply element appears", 10)
    return replies(driver)[-1]


def replies(driver: WebDriver) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#messages .message.assistant")


def reply_text(reply: WebElement) -> str:
    return str(reply.find_element(By.CSS_SELECTOR, ".body").text)


def stored_conversations(driver: WebDriver) -> list[dict[str, Any]]:
    return json.loads(driver.execute_script("return localStorage.getItem('ollama-ui.conversations') || '[]'"))


def expires_at(server: Server, model: str) -> datetime:
    [loaded] = [m for m in httpx.get(server.url + "/api/ps").json()["models"] if m["name"] == model]
    return datetime.fromisoformat(loaded["expires_at"])


def screenshot(driver: WebDriver, name: str) -> None:
    assert driver.save_screenshot(str(artifacts_dir() / name))


def test_clients_probing_root_still_read_ollama_is_running(chat_server: Server) -> None:
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}, {"Accept": "text/plain, */*"}):
        r = httpx.get(chat_server.url + "/", headers=headers)
        assert (r.status_code, r.text) == (200, "Ollama is running"), headers
        assert r.headers["content-type"].startswith("text/plain") and "Accept" in r.headers["vary"]
    head = httpx.head(chat_server.url + "/", headers={"Accept": BROWSER_ACCEPT})
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/plain")


def test_browsers_get_a_self_contained_page_under_a_strict_policy(chat_server: Server) -> None:
    r = httpx.get(chat_server.url + "/", headers={"Accept": BROWSER_ACCEPT})
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    csp = dict(part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'self'" and csp["connect-src"] == "'self'" and "data:" in csp["img-src"]
    assert csp["script-src"].startswith("'sha256-") and "unsafe" not in r.headers["content-security-policy"]
    # Everything is inline: nothing to fetch from this server, let alone from a CDN.
    assert "<script src" not in r.text and "<link" not in r.text and "http" not in r.text.split("<body>")[1]
    # The DNS-rebinding guard still applies to the page.
    refused = httpx.get(chat_server.url + "/", headers={"Accept": BROWSER_ACCEPT, "Host": "evil.example"})
    assert refused.status_code == 403 and refused.json() == {"error": "host not allowed"}


def test_streams_a_reply_stops_it_and_keeps_the_history(page: WebDriver, chat_server: Server) -> None:
    pick(page, STORYTELLER)
    reply = send(page, LONG_PROMPT)
    assert page.find_element(By.ID, "stop").is_displayed()

    # Streamed: the reply grows over several polls while the request is still running.
    sizes: list[int] = []
    def grew_three_times() -> bool:
        sizes.append(len(reply_text(reply)))
        return len({size for size in sizes if size > 0}) >= 4
    wait_for(page, grew_three_times, "the reply grows over several polls")
    assert sizes == sorted(sizes) and reply.get_attribute("data-state") == "streaming"
    during = expires_at(chat_server, STORYTELLER)
    screenshot(page, "chat-page-streaming.png")

    page.find_element(By.ID, "stop").click()
    wait_for(page, lambda: reply.get_attribute("data-state") == "stopped", "the page marks the reply stopped", 10)
    assert page.find_element(By.ID, "send").is_displayed()
    stopped_text = reply_text(reply)
    for _ in range(4):
        time.sleep(0.5)
        assert reply_text(reply) == stopped_text

    # The server saw the client go: the request released the model (its keep-alive restarted) ...
    wait_for(page, lambda: expires_at(chat_server, STORYTELLER) > during, "the server ends the request", 60)
    # ... and the only slot, which a 20000-token generation would otherwise hold for many minutes.
    r = httpx.post(chat_server.url + "/api/chat", timeout=MODEL_WAIT_S, json={
        "model": STORYTELLER, "stream": False, "options": {"num_predict": 2},
        "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200 and r.json()["eval_count"] == 2

    # A second conversation, answered to the end.
    page.find_element(By.ID, "new-chat").click()
    assert not replies(page)
    pick(page, BRIEF)
    second = send(page, "Say hello.")
    wait_for(page, lambda: second.get_attribute("data-state") == "done", "the brief answer completes")
    second_text = reply_text(second)
    assert second_text and "tokens/s" in second.find_element(By.CSS_SELECTOR, ".note").text

    # Reloaded, both conversations are still there, with the stopped reply as it was.
    page.refresh()
    wait_for(page, lambda: len(page.find_elements(By.CSS_SELECTOR, "#conversations li")) == 2, "history restored", 10)
    [current] = replies(page)  # the conversation open before the reload
    assert current.get_attribute("data-state") == "done" and reply_text(current) == second_text
    titles = [li.text for li in page.find_elements(By.CSS_SELECTOR, "#conversations .open")]
    assert titles == ["Say hello.", LONG_PROMPT]
    page.find_elements(By.CSS_SELECTOR, "#conversations .open")[1].click()
    wait_for(page, lambda: model_picker(page).first_selected_option.get_attribute("value") == STORYTELLER,
             "switching conversations picks its model", 10)
    [restored] = replies(page)
    assert restored.get_attribute("data-state") == "stopped" and reply_text(restored) == stopped_text
    assert [m["role"] for c in stored_conversations(page) for m in c["messages"]] == ["user", "assistant"] * 2
    screenshot(page, "chat-page-history.png")


def test_code_blocks_render_as_code_and_model_text_never_becomes_markup(page: WebDriver) -> None:
    content = ("Use `print` like this:\n```python\nprint('<b>not bold</b>')\n```\n"
               "<img src=x onerror=\"document.title='owned'\"><script>document.title='owned'</script>")
    conversation = {"id": "c1", "title": "code", "model": BRIEF, "updated": 1, "messages": [
        {"role": "user", "content": "show me code"}, {"role": "assistant", "content": content}]}
    page.execute_script("localStorage.setItem('ollama-ui.conversations', arguments[0]);"
                        "localStorage.setItem('ollama-ui.current', 'c1')", json.dumps([conversation]))
    page.refresh()
    [reply] = wait_for(page, lambda: replies(page), "the stored conversation is shown", 10)
    block = reply.find_element(By.CSS_SELECTOR, "pre.code > code")
    assert block.text == "print('<b>not bold</b>')" and block.get_attribute("data-lang") == "python"
    assert [c.text for c in reply.find_elements(By.CSS_SELECTOR, ".body > code")] == ["print"]
    assert not reply.find_elements(By.CSS_SELECTOR, "b, img, script")
    assert "<script>document.title='owned'</script>" in reply_text(reply)
    assert page.title == "Ollama chat"


def test_images_attach_for_a_vision_model_only(page: WebDriver, chat_server: Server) -> None:
    attach_label = page.find_element(By.ID, "attach-label")
    pick(page, BRIEF)
    assert not attach_label.is_displayed()
    pick(page, VISION)
    wait_for(page, attach_label.is_displayed, "the image button shows for a vision model", 10)
    image = chat_server.home / "picture.png"
    image.write_bytes(png(7))
    page.find_element(By.ID, "attach").send_keys(str(image))
    wait_for(page, lambda: page.find_elements(By.CSS_SELECTOR, "#attachments img"), "a thumbnail", 10)
    reply = send(page, "What is in this picture?")
    wait_for(page, lambda: reply.get_attribute("data-state") in ("done", "error"), "the answer completes")
    assert reply.get_attribute("data-state") == "done", reply.text
    [question] = page.find_elements(By.CSS_SELECTOR, "#messages .message.user")
    assert question.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:image/png;base64,")
    [stored] = stored_conversations(page)
    assert stored["messages"][0]["images"] == [base64.b64encode(png(7)).decode()]
    assert not page.find_elements(By.CSS_SELECTOR, "#attachments img")


def test_asks_for_the_api_key_once_and_sends_it(browser: WebDriver, tmp_path_factory: pytest.TempPathFactory,
                                                smollm2_gguf: Path) -> None:
    key = "chat-page-test-key-0123456789"
    server = Server(tmp_path_factory.mktemp("chat-page-keys"), OLLAMA_API_KEYS=key).start()
    try:
        server.env["OLLAMA_API_KEY"] = key  # for the CLI that imports the model
        server.import_smollm2(smollm2_gguf, BASE)
        (server.home / "brief.Modelfile").write_text(f"FROM {BASE}\nPARAMETER num_predict 6\n")
        server.cli("create", BRIEF, "-f", str(server.home / "brief.Modelfile"))
        assert httpx.get(server.url + "/api/tags").status_code == 401

        browser.get(server.url + "/")  # the page itself needs no key
        browser.execute_script("localStorage.clear()")
        browser.refresh()
        dialog = browser.find_element(By.ID, "key-dialog")
        wait_for(browser, dialog.is_displayed, "a 401 from /api/tags asks for a key", 30)
        browser.find_element(By.ID, "key-input").send_keys("not-the-key")
        browser.find_element(By.ID, "key-save").click()
        wait_for(browser, lambda: "refused" in browser.find_element(By.ID, "key-error").text,
                 "a refused key asks again", 30)
        screenshot(browser, "chat-page-api-key.png")
        browser.find_element(By.ID, "key-input").send_keys(key)
        browser.find_element(By.ID, "key-save").click()
        wait_for(browser, lambda: len(model_picker(browser).options) == 2, "the models load with the key", 30)
        assert not dialog.is_displayed()
        assert browser.execute_script("return localStorage.getItem('ollama-ui.apiKey')") == key

        pick(browser, BRIEF)
        reply = send(browser, "Say hello.")
        wait_for(browser, lambda: reply.get_attribute("data-state") in ("done", "error"), "the answer completes")
        assert reply.get_attribute("data-state") == "done" and reply_text(reply)

        browser.refresh()  # the stored key is sent from the start: no second question
        wait_for(browser, lambda: len(model_picker(browser).options) == 2, "the models load", 30)
        assert not browser.find_element(By.ID, "key-dialog").is_displayed()
    finally:
        server.stop()
