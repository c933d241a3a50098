"""The web pages of ``fatune serve`` in a real browser (Playwright + Debian's chromium) against the real
server on the tiny model: chat streaming and text direction, the arena's battle -> vote -> reveal ->
leaderboard round trip, and the API-key prompt.

Screenshots land in each test's tmp_path and, when ``FATUNE_SCREENSHOTS`` names a directory, are copied
there too so that a person can look at them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():  # checked here, before the session fixtures train the tiny runs
    pytest.skip("no chromium binary (install it: apt-get install chromium)", allow_module_level=True)
START_TIMEOUT_S = 120
ANSWER_TIMEOUT_MS = 120_000
PERSIAN_QUESTION = "پایتخت ایران کجاست؟"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(model_dir: Path, lora_dir: Path, workdir: Path, *extra: str):
    """Run ``fatune serve`` as a user would; yield its base URL once ``/v1/models`` answers."""
    port = free_port()
    log_path = workdir / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "fatune", "serve", f"base={model_dir}", f"lora={lora_dir}",
           "--port", str(port), "--votes", str(workdir / "votes.jsonl"), *extra]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"fatune serve exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers (401 when it wants a key): it is up
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"fatune serve did not answer within {START_TIMEOUT_S}s:\n"
                                f"{log_path.read_text(errors='replace')}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_runs, tmp_path_factory):
    """One server for the chat and arena tests: base and lora, votes to workdir/votes.jsonl."""
    workdir = tmp_path_factory.mktemp("serve")
    with serve(tiny_model_dir, tiny_runs["lora"], workdir) as url:
        yield url, workdir


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 800}, locale="fa-IR")
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("FATUNE_SCREENSHOTS"):
        target = Path(os.environ["FATUNE_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)


def direction(page, selector: str) -> str:
    return page.eval_on_selector(selector, "e => getComputedStyle(e).direction")


def wait_answers(page, count: int) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('.message.assistant[data-done=\"true\"]').length >= n",
        arg=count, timeout=ANSWER_TIMEOUT_MS)


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")  # Enter sends (Shift+Enter would be a new line)


def test_chat_streams_and_sets_direction_per_message(server, page, tmp_path):
    url, _ = server
    page.goto(f"{url}/")
    page.wait_for_function("document.querySelectorAll('#model option').length >= 2")
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == ["base", "lora"]
    page.select_option("#model", "lora")
    page.fill("#max-tokens", "24")  # the tiny random model rambles; keep the test quick

    # A Persian question that also holds a URL and a code block, which must stay left-to-right.
    send(page, f"{PERSIAN_QUESTION} ببینید https://fa.wikipedia.org/wiki/Tehran\n```python\nprint('سلام')\n```")
    wait_answers(page, 1)
    assert page.is_hidden("#error"), page.inner_text("#error")
    answer = page.locator(".message.assistant").first
    assert answer.get_attribute("data-model") == "lora"
    assert answer.get_attribute("data-finish") in ("stop", "length")
    assert answer.text_content(), "the streamed answer is empty"

    assert direction(page, ".message.user") == "rtl"
    link = page.locator(".message.user a").first
    assert link.get_attribute("href") == "https://fa.wikipedia.org/wiki/Tehran"
    assert direction(page, ".message.user a") == "ltr"
    assert direction(page, ".message.user pre code") == "ltr"
    assert page.text_content(".message.user pre code") == "print('سلام')"

    # An English message (with markup, which must show as text, never become elements) reads LTR.
    send(page, "What is <b>the capital</b> of Iran? <img src=x onerror=alert(1)>")
    wait_answers(page, 2)
    assert page.is_hidden("#error"), page.inner_text("#error")
    assert direction(page, ".message.user >> nth=1") == "ltr"
    assert page.locator("#messages b, #messages img").count() == 0
    assert "<b>the capital</b>" in page.text_content(".message.user >> nth=1")
    screenshot(page, tmp_path / "chat.png")

    page.click("#reset")
    assert page.locator("#messages .message").count() == 0


def test_arena_battle_vote_reveal_leaderboard(server, page, tmp_path):
    url, workdir = server
    page.goto(f"{url}/arena")
    page.wait_for_function("document.querySelector('#board-summary').textContent.length > 0")
    assert page.locator("#leaderboard tbody tr").count() == 0
    assert page.is_disabled("button[data-winner=left]")

    page.fill("#prompt", PERSIAN_QUESTION)
    page.click("#battle")
    page.wait_for_selector('#answer-left[data-done="true"]', timeout=ANSWER_TIMEOUT_MS)
    page.wait_for_selector('#answer-right[data-done="true"]', timeout=ANSWER_TIMEOUT_MS)
    assert page.is_hidden("#error"), page.inner_text("#error")
    assert direction(page, "#answer-left") in ("rtl", "ltr")  # dir="auto": the browser decides
    assert page.get_attribute("#answer-left", "dir") == "auto"

    page.click("button[data-winner=left]")
    page.wait_for_selector("#reveal", state="visible")
    reveal = page.inner_text("#reveal")
    assert "base" in reveal and "lora" in reveal, reveal
    for winner in ("left", "right", "tie", "both_bad"):
        assert page.is_disabled(f"button[data-winner={winner}]")  # one vote per battle
    page.wait_for_function("document.querySelectorAll('#leaderboard tbody tr').length === 2")
    assert page.is_hidden("#error"), page.inner_text("#error")
    screenshot(page, tmp_path / "arena.png")

    lines = (workdir / "votes.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1, lines
    vote = json.loads(lines[0])
    assert vote["winner"] == "left"
    assert sorted(vote["models"]) == ["base", "lora"]


def test_api_key_is_asked_once_and_kept(tiny_model_dir, tiny_runs, tmp_path, page):
    dialogs = []

    def answer_key(dialog):
        dialogs.append(dialog.message)
        dialog.accept("secret")

    page.on("dialog", answer_key)
    with serve(tiny_model_dir, tiny_runs["lora"], tmp_path, "--api-key", "secret") as url:
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{url}/v1/models", timeout=10)
        assert denied.value.code == 401

        page.goto(f"{url}/")
        page.wait_for_function("document.querySelectorAll('#model option').length >= 2")
        page.fill("#max-tokens", "8")
        send(page, PERSIAN_QUESTION)
        wait_answers(page, 1)
        assert page.is_hidden("#error"), page.inner_text("#error")
        assert page.locator(".message.assistant").first.text_content()
        assert page.evaluate("sessionStorage.getItem('fatune-api-key')") == "secret"
        assert len(dialogs) == 1, dialogs  # asked once; the chat request reused the stored key
