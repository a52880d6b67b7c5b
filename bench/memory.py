"""P6 memory: the resident size of each process `forge-bridge serve` runs while idle, with its default layout (web master
and workers, the worker pool: one event worker and an agent worker per slot, their RQ scheduler, the poller),
against an idle Python interpreter measured in the same run.

Run: `.venv/bin/python bench/memory.py`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import healthy, wait_for  # noqa: E402

from forge_bridge.service.supervisor import descendants  # noqa: E402

SETTLE = 5.0   # the workers import the forge clients after /healthz answers


def rss_mb(pid: int, field: str = "Rss:") -> float:
    """Resident size (Rss) or proportional share (Pss: pages shared with a fork parent counted once in all)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def role(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    words = [word.decode(errors="replace") for word in argv if word]
    if any("valkey" in word for word in words[:1]):
        return "valkey"
    return " ".join(words[2:4]) if len(words) > 3 and words[1] == "-m" else " ".join(words[:2])[-40:]


FORGES = {"github": '[[forges]]\nname = "github"\nkind = "github"\nurl = "https://github.com"\n',
          "gitea": '[[forges]]\nname = "gitea"\nkind = "gitea"\nurl = "https://git.example.com"\n',
          # bot_login given: without it the bridge would ask GitLab who the token is at start
          "gitlab": '[[forges]]\nname = "gitlab"\nkind = "gitlab"\nurl = "https://gitlab.example.com"\n'
                    'bot_login = "bot"\n'}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forges", nargs="+", choices=sorted(FORGES), default=sorted(FORGES),
                        help="the forge kinds configured (a worker preloads each kind's client)")
    args = parser.parse_args()
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(1)   # an interpreter's resident size once started (nothing to poll for)
    baseline = rss_mb(idle.pid)
    idle.kill()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        from conftest import free_port

        port = free_port()
        config = root / "forge-bridge.toml"
        config.write_text(f'data_dir = "{root / "data"}"\nbind = "127.0.0.1:{port}"\n'
                          + "".join(FORGES[kind] for kind in args.forges))
        serve = subprocess.Popen([sys.executable, "-m", "forge_bridge", "--config", str(config), "serve"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
        try:
            wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), timeout=60, what="serve")
            time.sleep(SETTLE)
            rows = [(role(pid), rss_mb(pid), rss_mb(pid, "Pss:")) for pid in [serve.pid, *descendants(serve.pid)]]
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
    total = sum(pss for _, _, pss in rows)
    print(f"idle interpreter: {baseline:.0f} MB resident")
    for name, rss, pss in rows:
        print(f"  {name:<24} resident {rss:5.0f} MB ({rss / baseline:4.1f}x), own share {pss:5.0f} MB")
    print(f"serve in all: {total:.0f} MB by proportional share ({total / baseline:.1f}x an idle interpreter), "
          f"{len(rows)} processes")


if __name__ == "__main__":
    main()
