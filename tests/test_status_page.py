"""The status page in a real headless browser (Debian's Chromium driven by Playwright) against `serve`: it loads,
shows the running task, and its log tail updates without a reload; a screenshot is kept as a test artifact."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import requests
from helpers import SECRET, wait_for
from playwright.sync_api import sync_playwright
from test_end_to_end import BODY, TITLE

from forge_bridge.store import embedded

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
    assert github.token not in html and SECRET not in html

    # `logs --follow` streams the same log until the task ends (here: stopped from another process).
    env = {**os.environ, "FORGE_BRIDGE_REDIS_URL": embedded.url_for(bridge.data_dir), "FAKE_FORGE_TOKEN": github.token}
    cli = [sys.executable, "-m", "forge_bridge", "--config", str(bridge.config)]
    follow = subprocess.Popen([*cli, "logs", f"{github.host}/alice/widgets#1", "--follow"], env=env,
                              stdout=subprocess.PIPE, text=True)
    subprocess.run([*cli, "stop", f"{github.host}/alice/widgets#1"], env=env, check=True, capture_output=True)
    out, _ = follow.communicate(timeout=30)
    assert follow.returncode == 0 and "tick 1" in out and "agent stopped (cancelled)" in out
    assert github.token not in bridge.log.read_text() and SECRET not in bridge.log.read_text()
