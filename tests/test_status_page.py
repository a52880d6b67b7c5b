"""The status page in a real headless browser (Debian's Chromium driven by Playwright) against `serve`: it loads,
shows the running task, and its log tail updates without a reload; a screenshot is kept as a test artifact."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import requests
from helpers import wait_for
from playwright.sync_api import sync_playwright
from test_end_to_end import BODY, TITLE

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _last_tick(text: str) -> int:
    ticks = [int(n) for n in re.findall(r"tick (\d+)", text)]
    return max(ticks) if ticks else -1


def test_the_page_shows_a_running_task_and_its_live_log(github, start_bridge, tmp_path):
    repo = github.create_repo("alice", "widgets")
    issue = github.create_issue(repo, TITLE, BODY)
    bridge = start_bridge([github], agent_args=["--ticks", "60"])
    github.add_label(repo, issue, "kugetsu:todo")
    wait_for(lambda: "kugetsu:running" in github.labels_of(repo, issue), timeout=60, what="the agent to run")

    # Without JavaScript the page already holds the running task and its log.
    html = wait_for(lambda: (lambda page: page if "tick 1" in page else "")(requests.get(bridge.url, timeout=10).text),
                    timeout=30, what="the page to show the agent's log")
    assert f"{github.host}/alice/widgets#1" in html and "working on: Fix the emoji names" in html

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})   # a phone
        page.goto(bridge.url)
        assert page.locator("section.running").count() == 1
        first = _last_tick(page.locator("pre.log").inner_text())
        page.wait_for_function(
            f"""() => {{ const m = [...document.querySelector('pre.log').textContent.matchAll(/tick (\\d+)/g)];
                        return m.length && Math.max(...m.map(x => Number(x[1]))) > {first} + 2; }}""",
            timeout=20000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "status-page.png").stat().st_size > 1000
