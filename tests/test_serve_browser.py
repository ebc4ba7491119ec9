"""The chat page in headless Chromium: streamed answers that grow token by token and are shown as text, threads
that survive a reload (new, switch, rename, delete), the model picker, Stop, theme, and phone width."""

import os

import pytest

from moai_llm.loading import load_tokenizer
from moai_llm.serving import ModelRegistry, load_models

from .serve_helpers import CutStreams, running_server, save_tiny_model, scripted_model
from .serve_webdriver import CHROMEDRIVER, CHROMIUM, Browser

pytestmark = pytest.mark.integration  # a server and a headless browser

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and not os.environ.get("CI"):
    pytest.skip("Debian's chromium and chromium-driver are not installed (CI installs them)", allow_module_level=True)

XSS = "<img src=x onerror=alert(1)>"
SHORT = f"Here is {XSS} shown as text, not as an image."
LONG = "A very long answer. " * 150
TOKENIZER = load_tokenizer()


def script(prompt_ids):
    return LONG if "essay" in TOKENIZER.decode(prompt_ids) else SHORT


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    real = load_models([("tiny", save_tiny_model(tmp_path_factory.mktemp("browser_model") / "tiny"))])
    scripted = scripted_model("scripted", script, piece=3, delay=0.04)
    cramped = scripted_model("cramped", script, piece=3, delay=0.01)
    cramped.context_length = cramped.max_tokens_limit = 48
    base = scripted_model("base", script, mode="completion", piece=3, delay=0.02)  # a pretraining run
    cut = scripted_model("cut", script, piece=3, delay=0.02)
    registry = ModelRegistry([real.models["tiny"], scripted, cramped, base, cut])
    with running_server(registry, wrap=lambda app: CutStreams(app, "cut")) as url:
        yield url, registry


@pytest.fixture
def browser(tmp_path):
    browser = Browser(tmp_path / "profile")
    yield browser
    browser.quit()


LAST_ANSWER = (
    "const m = [...document.querySelectorAll('#messages .msg.assistant')].pop(); "
    "return m && m.firstChild ? m.firstChild.textContent : null;"
)
IDLE = "return !document.body.classList.contains('busy')"
RECORD_GROWTH = """
window.lengths = [];
new MutationObserver(() => {
  const m = [...document.querySelectorAll('#messages .msg.assistant')].pop();
  if (m && m.firstChild) window.lengths.push(m.firstChild.textContent.length);
}).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
"""


def pick_model(browser, name):
    browser.click(f"#model option[value='{name}']")
    assert browser.run("return document.getElementById('model').value;") == name


def send(browser, text):
    browser.type("#prompt", text)
    browser.click("#send")


def test_chat_page(site, browser, tmp_path):
    url, registry = site
    scripted, real = registry.models["scripted"].engine, registry.models["tiny"].engine
    browser.open(url)
    browser.wait(
        "return document.querySelectorAll('#model option').length === 5 && !document.getElementById('model').hidden;"
    )

    # a streamed answer grows in several steps and shows markup as characters
    browser.run(RECORD_GROWTH)
    pick_model(browser, "scripted")
    send(browser, "hello there")
    browser.wait(IDLE + " && document.querySelectorAll('#messages .msg.assistant').length === 1")
    assert browser.run(LAST_ANSWER) == SHORT
    assert len(set(browser.run("return window.lengths;"))) > 3, "the answer did not grow token by token"
    assert browser.run("return document.querySelectorAll('#messages img').length;") == 0
    assert not browser.has_alert()
    browser.screenshot(tmp_path / "chat-desktop.png")

    # the thread is still there after a reload
    browser.open(url)
    browser.wait("return document.querySelectorAll('#model option').length === 5;")
    assert browser.run("return [...document.querySelectorAll('#threads .title')].map(e => e.textContent);") == [
        "hello there"
    ]
    assert browser.run(LAST_ANSWER) == SHORT

    # switching models sends the next question to the other model
    pick_model(browser, "tiny")
    asked, generated = len(scripted.prompts), real.tokens_generated
    send(browser, "And a question for the real model?")
    browser.wait(IDLE + " && document.querySelectorAll('#messages .msg.assistant').length === 2")
    assert len(scripted.prompts) == asked and real.tokens_generated > generated
    assert "tokens" in browser.run("return [...document.querySelectorAll('#messages .note')].pop().textContent;")

    # Stop ends a generation: the page says so and the server stops generating
    pick_model(browser, "scripted")
    send(browser, "write a long essay")
    browser.wait(
        "const m = [...document.querySelectorAll('#messages .msg.assistant')].pop(); "
        "return m.firstChild.textContent.length > 30;"
    )
    browser.click("#stop")
    browser.wait(IDLE + ";")
    assert browser.run("return [...document.querySelectorAll('#messages .note')].pop().textContent;") == "[stopped]"
    assert len(browser.run(LAST_ANSWER)) < len(LONG)
    assert _eventually(lambda: scripted.cancelled == 1)

    # threads: new, rename, switch, delete
    browser.click("#new-thread")
    assert browser.run("return document.querySelectorAll('#threads .thread').length;") == 2
    assert browser.run("return document.querySelectorAll('#messages .msg').length;") == 0
    browser.click("#threads .thread:nth-child(2) .rename")
    browser.run("document.querySelector('#threads .rename-input').value = '';")
    browser.type("#threads .rename-input", "Renamed thread\ue007")  # \ue007: Enter
    assert (
        browser.run("return document.querySelector('#threads .thread:nth-child(2) .title').textContent;")
        == "Renamed thread"
    )
    browser.click("#threads .thread:nth-child(2) .title")
    assert browser.run("return document.querySelectorAll('#messages .msg').length;") == 6
    browser.click("#threads .thread:nth-child(1) .delete")
    browser.click("#threads .thread:nth-child(1) .delete")  # the second click confirms
    assert browser.run("return [...document.querySelectorAll('#threads .title')].map(e => e.textContent);") == [
        "Renamed thread"
    ]

    # a thread that outgrows the context: the page drops old exchanges, then lets the server size the answer
    browser.click("#new-thread")
    pick_model(browser, "cramped")
    for question in ("first question", "second question"):
        send(browser, question)
        browser.wait(
            IDLE + " && [...document.querySelectorAll('#messages .msg.assistant')].pop()"
            ".firstChild.textContent.length > 0"
        )
    assert browser.run(LAST_ANSWER) == SHORT
    assert "oldest exchange" in browser.run(
        "return [...document.querySelectorAll('#messages .note')].pop().textContent;"
    )
    assert not browser.run("return document.querySelector('#messages .msg.error');")

    # settings, theme, phone width
    browser.click("#toggle-settings")
    assert browser.run("return getComputedStyle(document.getElementById('temperature')).display;") != "none"
    theme = browser.run("return document.documentElement.dataset.theme;")
    browser.click("#theme")
    assert browser.run("return document.documentElement.dataset.theme;") != theme
    browser.resize(390, 844)
    browser.wait("return window.innerWidth < 500;")
    browser.wait("return document.getElementById('sidebar').getBoundingClientRect().right <= 0;", 5)  # a drawer
    assert browser.run("return document.documentElement.scrollWidth <= window.innerWidth;")
    browser.click("#menu")
    browser.wait("return document.getElementById('sidebar').getBoundingClientRect().left >= 0;", 5)
    browser.click("#close-drawer")
    browser.wait("return document.getElementById('sidebar').getBoundingClientRect().right <= 0;", 5)
    browser.screenshot(tmp_path / "chat-phone.png")
    assert (tmp_path / "chat-phone.png").stat().st_size > 1000


def test_completion_mode_for_pretraining_runs_chat_for_fine_tuned_and_a_cut_stream(site, browser):
    url, registry = site
    base, scripted = registry.models["base"].engine, registry.models["scripted"].engine
    browser.open(url)
    browser.wait("return document.querySelectorAll('#model option').length === 5;")
    mode = "return document.getElementById('mode').value;"

    # a pretraining run opens in completion mode: the text goes to /v1/completions as written, no chat template
    browser.click("#new-thread")
    pick_model(browser, "base")
    assert browser.run(mode) == "completion"
    send(browser, "Once upon a time")
    browser.wait(IDLE + " && document.querySelectorAll('#messages .msg.assistant').length === 1")
    assert TOKENIZER.decode(base.prompts[-1]) == "Once upon a time"
    assert browser.run(LAST_ANSWER) == SHORT
    send(browser, " and then")  # the thread's text so far, continued
    browser.wait(IDLE + " && document.querySelectorAll('#messages .msg.assistant').length === 2")
    assert TOKENIZER.decode(base.prompts[-1]) == "Once upon a time" + SHORT + " and then"

    # a fine-tuned model opens in chat mode: the messages go through its chat template
    browser.click("#new-thread")
    pick_model(browser, "scripted")
    assert browser.run(mode) == "chat"
    send(browser, "hello")
    browser.wait(IDLE + " && document.querySelectorAll('#messages .msg.assistant').length === 1")
    assert "<|im_start|>user\nhello" in TOKENIZER.decode(scripted.prompts[-1])
    # the Mode picker overrides the model's own mode for a thread
    browser.click("#new-thread")
    browser.click("#mode option[value='completion']")
    send(browser, "Plain text")
    browser.wait(IDLE + " && document.querySelectorAll('#messages .msg.assistant').length === 1")
    assert TOKENIZER.decode(scripted.prompts[-1]) == "Plain text"

    # a stream that ends without a finish_reason and [DONE] is marked, not shown as complete
    browser.click("#new-thread")
    pick_model(browser, "cut")
    send(browser, "hello")
    browser.wait(IDLE + " && document.querySelectorAll('#messages .msg.assistant').length === 1")
    note = browser.run("return [...document.querySelectorAll('#messages .note')].pop().textContent;")
    assert "stopped early" in note
    assert browser.run("return document.querySelector('#messages .msg.assistant').classList.contains('incomplete');")
    assert len(browser.run(LAST_ANSWER)) < len(SHORT)


def _eventually(condition, timeout=5.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
