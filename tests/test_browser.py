"""The chat in a real browser: Debian's chromium driven by Playwright types a prompt, clicks Send, watches the
canvas fill in and waits for the answer, saving screenshots along the way.

Screenshots go to the test's tmp folder; set TIE_LITE_SCREENSHOTS=docs to refresh docs/chat-generating.png and
docs/chat-answer.png. Where no chromium is present the test installs Debian's package (as root with apt-get,
as CI runs) and skips, saying why, only when that is impossible."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

try:
    from test_ui import MASK, ROOT, launch, slow_forwards, tiny_models  # noqa: F401  (tiny_models: a fixture)
except ImportError:  # tests/ as a package
    from .test_ui import MASK, ROOT, launch, slow_forwards, tiny_models  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
PROMPT = "What is (48+18)*4?"  # each shipped member alone gets it wrong (172, 276); relayed, 264
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")


def ensure_chromium() -> str | None:
    """The browser's path, installing Debian's chromium where we may; None with the reason printed."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
                       shell=True, capture_output=True, timeout=900)
    return CHROMIUM if os.path.exists(CHROMIUM) else None


@pytest.fixture(scope="module")
def page(tiny_models):  # noqa: F811
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    browser_path = ensure_chromium()
    if browser_path is None:
        pytest.skip(f"no browser: {CHROMIUM} is missing and Debian's chromium could not be installed "
                    f"(needs root and apt-get)")
    demo, url = launch()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.demo = demo
        tab.goto(url)
        tab.wait_for_selector("#tie-message textarea")
        yield tab
        browser.close()
    demo.close()


CHAT = "document.querySelector('#tie-chat').innerText"
LEADERS = "(document.querySelector('#tie-leaders')?.innerText || '')"
STATUS = "(document.querySelector('#tie-status')?.innerText || '')"
PLOTTED = "(document.querySelector('#tie-scores img') !== null)"
TWO_ROUNDS = f"({LEADERS}.split('\\n').filter(l => l.trim()).length >= 3)"  # header + two rounds


def shots(tmp_path: Path) -> Path:
    where = os.environ.get("TIE_LITE_SCREENSHOTS")
    folder = (ROOT / where) if where else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_type_send_watch_and_answer(page, tmp_path, monkeypatch):
    slow_forwards(monkeypatch, page.demo.tie_cache.ensemble, 0.03)

    folder = shots(tmp_path)
    page.locator("#tie-message textarea").fill(PROMPT)
    page.locator("#tie-send").click()
    # streaming itself is asserted through gradio_client in test_ui.py; here the canvas may finish first
    page.wait_for_function(f"() => {CHAT}.includes('{MASK}') || {STATUS}.includes('answered')", timeout=120_000,
                           polling=20)
    page.screenshot(path=str(folder / "chat-generating.png"))
    # a better picture: the canvas still filling in after a round has been scored (unless it finished first)
    page.wait_for_function(f"() => ({CHAT}.includes('{MASK}') && {TWO_ROUNDS} && {PLOTTED}) || "
                           f"{STATUS}.includes('answered')", timeout=300_000, polling=50)
    if page.evaluate(f"() => {CHAT}.includes('{MASK}')"):
        page.screenshot(path=str(folder / "chat-generating.png"))
    page.wait_for_function(f"() => {STATUS}.includes('answered') && !{CHAT}.includes('{MASK}')", timeout=300_000)
    page.wait_for_timeout(800)  # let the plot finish drawing
    page.screenshot(path=str(folder / "chat-answer.png"))

    defaults = page.demo.tie_defaults  # what the chat runs with: the CLI's defaults (score verify)
    expected = page.demo.tie_cache.ensemble.run([{"role": "user", "content": PROMPT}], defaults.decode,
                                                defaults.tie).text
    chat = page.locator("#tie-chat").inner_text()
    assert all(line in chat for line in expected.splitlines()), (expected, chat)
    summary = page.locator("#tie-summary").inner_text()
    assert "final member" in summary and "peak memory" in summary and "swaps" in summary
    assert "round" in page.locator("#tie-leaders").inner_text()
    assert page.locator("#tie-send").is_enabled()
    for shot in ("chat-generating.png", "chat-answer.png"):
        assert (folder / shot).stat().st_size > 10_000


def test_invalid_settings_show_a_message_not_a_trace(page):
    page.get_by_text("Settings", exact=True).click()
    field = page.locator("#tie-settings input[type=number]").first  # generation length
    field.fill("50")
    field.press("Tab")
    page.wait_for_function("() => document.querySelector('#tie-check').innerText.includes('not a multiple')",
                           timeout=30_000)
    page.locator("#tie-message textarea").fill("What is 37+85?")
    page.locator("#tie-send").click()
    page.wait_for_function(f"() => {STATUS}.includes('not a multiple')", timeout=60_000)
    status = page.locator("#tie-status").inner_text()
    assert "Traceback" not in status and "⚠" in status
    assert page.locator("#tie-message textarea").input_value() == "What is 37+85?"  # the message comes back
    field.fill("48")
    field.press("Tab")
    page.wait_for_function("() => document.querySelector('#tie-check').innerText.includes('✓')", timeout=30_000)


def fresh_tab(page, width: int = 1400, height: int = 900):
    """A new tab on the same chat (its own session: an empty conversation)."""
    tab = page.context.browser.new_page(viewport={"width": width, "height": height})
    tab.demo = page.demo
    tab.goto(page.url)
    tab.wait_for_selector("#tie-message textarea")
    return tab


def ask(tab, question: str, turn: int) -> str:
    """Send `question` as the conversation's turn number `turn` and return the reply once it is final."""
    tab.locator("#tie-message textarea").fill(question)
    tab.locator("#tie-send").click()
    reply = tab.wait_for_function(
        f"() => {{ const bots = document.querySelectorAll('#tie-chat .bot'); "
        f"const last = bots.length ? bots[bots.length - 1].innerText : ''; "  # gradio's placeholder while it renders
        f"return bots.length === {turn} && {STATUS}.includes('answered') && !{CHAT}.includes('{MASK}') "
        f"&& !last.includes('Loading content') ? last : null; }}", timeout=300_000)
    return reply.json_value()


def test_a_three_turn_conversation_answers_every_question(page):
    """Follow-ups are answered for themselves: the shipped members read the last question alone (they were trained
    on single questions) and the chat says so quietly; before, the second turn copied the first answer."""
    tab = fresh_tab(page)
    for turn, (question, value) in enumerate((("What is (23+41)*7?", (23 + 41) * 7), ("What is 37+85?", 37 + 85),
                                               ("What is 23*4+17*5?", 23 * 4 + 17 * 5)), start=1):
        reply = ask(tab, question, turn)
        assert reply.strip().endswith(f"Answer: {value}"), (question, reply)
    assert "each question on its own" in tab.locator("#tie-status").inner_text()
    tab.close()




def test_every_members_canvas_shows_who_committed_each_token_and_the_leader(page, monkeypatch):
    slow_forwards(monkeypatch, page.demo.tie_cache.ensemble, 0.03)
    tab = fresh_tab(page)
    tab.locator("#tie-message textarea").fill(PROMPT)
    tab.locator("#tie-send").click()
    # mid-decode, after a relay: both canvases in view, one of them holding tokens of both members, a leader
    # marked -- read in one go, since the next frame may redraw the view
    seen = tab.wait_for_function(f"""() => {{
        const view = document.querySelector('#tie-canvases');
        const cards = Array.from(view.querySelectorAll('.tie-card'));
        const owners = c => Array.from(c.querySelectorAll('.tie-token')).map(t => t.dataset.member);
        const mixed = cards.some(c => new Set(owners(c)).size === 2);
        const leader = view.querySelector('.tie-leader');
        if (!(cards.length === 2 && mixed && leader && view.innerText.includes('{MASK}'))) return null;
        const colours = {{}};
        view.querySelectorAll('.tie-token').forEach(t => colours[t.dataset.member] = getComputedStyle(t).borderBottomColor);
        return {{names: cards.map(c => c.dataset.member), leader: leader.dataset.member,
                 leaderText: leader.innerText, colours}};
    }}""", timeout=300_000, polling=20).json_value()
    assert seen["names"] == list(page.demo.tie_defaults.member_names)
    assert "★" in seen["leaderText"] and seen["leader"] in seen["names"]
    assert len(set(seen["colours"].values())) == 2  # one colour per member
    tab.wait_for_function(f"() => {STATUS}.includes('answered')", timeout=300_000)
    final = tab.locator("#tie-summary").inner_text().split("final member")[1].split()[0]
    assert "✓ final answer" in tab.locator(f"#tie-canvases .tie-card[data-member='{final}']").inner_text()
    tab.close()


def test_settings_errors_use_the_panels_words_and_the_context_bounds_the_length(page):
    tab = fresh_tab(page)
    tab.get_by_text("Settings", exact=True).click()
    length = tab.locator("#tie-settings input[type=number]").first  # generation length
    length.fill("320")
    length.press("Tab")
    tab.wait_for_function("() => document.querySelector('#tie-check').innerText.includes('at most')", timeout=30_000)
    check = tab.locator("#tie-check").inner_text()
    members = page.demo.tie_cache.ensemble.members
    prompt = min(m.max_length - len(m.prompt_ids([{"role": "user", "content": "What is (23+41)*7?"}]))
                 for m in members)
    assert f"at most {prompt // 16 * 16}" in check and "generation length" in check and "--" not in check
    length.fill("50")
    length.press("Tab")
    tab.wait_for_function("() => document.querySelector('#tie-check').innerText.includes('not a multiple')",
                          timeout=30_000)
    check = tab.locator("#tie-check").inner_text()
    assert "generation length 50" in check and "block size" in check and "--" not in check
    tab.close()


def test_at_phone_width_the_answer_comes_before_the_settings(page):
    tab = fresh_tab(page, 400, 860)
    ask(tab, "What is 37+85?", 1)

    def top(selector):
        return tab.locator(selector).bounding_box()["y"]

    assert top("#tie-chat") < top("#tie-canvases") < top("#tie-summary") < top("#tie-settings")
    assert tab.locator("#tie-chat .bot").last.bounding_box()["y"] < 860  # the reply is in the first screen
    tab.close()
