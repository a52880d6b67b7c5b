"""Benchmark: what a worker's forked job pays to get a Gitea client, with the forge clients imported in the worker
before it forks (forges.preload) against a worker that left the import to each job. Prints the ratio.

    .venv/bin/python bench/job_startup.py [rounds]
"""
from __future__ import annotations

import os
import subprocess
import sys

CHILD = """
import os, sys, time
from forge_bridge.config import ForgeConfig
from forge_bridge.forges import make_client, preload
from forge_bridge.models import ForgeKind

forge = ForgeConfig(name="g", kind=ForgeKind.GITEA, url="http://127.0.0.1:9", api_url="http://127.0.0.1:9/api/v1")
if sys.argv[1] == "preload":
    preload((forge,))
rounds, spent = int(sys.argv[2]), 0.0
for _ in range(rounds):
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:                      # the work horse: one job's worth of client
        make_client(forge)
        os._exit(0)
    os.waitpid(pid, 0)
    spent += time.perf_counter() - started
print(spent / rounds)
"""


def per_job(mode: str, rounds: int) -> float:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(rounds)], capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return float(done.stdout)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    baseline, preloaded = per_job("lazy", rounds), per_job("preload", rounds)
    print(f"per job, import left to the job: {baseline * 1000:8.1f} ms (baseline)")
    print(f"per job, preloaded by the worker: {preloaded * 1000:8.1f} ms")
    print(f"ratio preloaded / baseline: {preloaded / baseline:.3f}")


if __name__ == "__main__":
    main()
