#!/usr/bin/env python3
"""A fake coding agent: reads its prompt from stdin, commits a file, prints a JSON line with its session id.

Modes: commit (default), fail (exit 3 after printing), nocommit, hang (never ends), spawn (starts a child that
would outlive it, then hangs). `--record FILE` appends a JSON line at start and end, for concurrency checks.
`--leave FILE` writes FILE (uncommitted) as work in progress; `--fail-when WORD` fails when the prompt holds WORD.
`--sessions DIR` keeps its sessions there, as a real agent keeps them on its host: resuming one that is not there
fails before naming any session.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid


def record(path, what):
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"what": what, "pid": os.getpid(), "at": time.time(),
                                  "issue": os.environ.get("FORGE_BRIDGE_ISSUE_REF", ""),
                                  "task": os.environ.get("FORGE_BRIDGE_TASK_ID", "")}) + "\n")


def commit(prompt, include=""):
    with open("AGENT_WORK.md", "a") as out:
        out.write(prompt + "\n")
        if include:
            found = open(include).read() if os.path.exists(include) else "(missing)\n"
            out.write(f"{include}: {found}")
    subprocess.run(["git", "add", "AGENT_WORK.md"], check=True)
    subprocess.run(["git", "-c", "user.name=Fake Agent", "-c", "user.email=agent@example.invalid", "commit",
                    "--quiet", "-m", "agent: " + (prompt.splitlines() or ["work"])[0][:60]], check=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="commit", choices=["commit", "fail", "nocommit", "hang", "spawn"])
    parser.add_argument("--record", default="")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--ticks", type=int, default=0, help="print a numbered line every 0.3 s this many times")
    parser.add_argument("--leave", default="", help="write this file (uncommitted) before ending, as work in progress")
    parser.add_argument("--fail-when", default="", help="fail (mode fail) when the prompt contains this word")
    parser.add_argument("--cost-per-tick", type=float, default=0.0,
                        help="with each tick, also a JSON line {cost, tokens}: the run's totals so far")
    parser.add_argument("--sessions", default="", help="keep sessions in this folder; resuming an unknown one fails")
    parser.add_argument("--gate", nargs=2, metavar=("WORD", "FILE"), default=None,
                        help="when the prompt holds WORD, wait (up to a minute) until FILE exists: a test's go-ahead")
    parser.add_argument("--include", default="", help="a file of the worktree whose text goes into the committed work "
                                                       "(what a setup script left there)")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()
    prompt = sys.stdin.read()   # blocks until the bridge closes stdin
    record(args.record, "start")
    session = os.environ.get("FORGE_BRIDGE_SESSION_ID") or "fake-" + uuid.uuid4().hex[:12]
    if args.sessions:
        known = os.path.join(args.sessions, session)
        if os.environ.get("FORGE_BRIDGE_SESSION_ID") and not os.path.exists(known):
            print(f"fake agent: no session {session} here", file=sys.stderr, flush=True)
            return 1
        os.makedirs(args.sessions, exist_ok=True)
        with open(known, "a") as out:
            out.write(json.dumps({"prompt": prompt}) + "\n")
    print(json.dumps({"type": "start", "session_id": session}), flush=True)
    print(f"working on: {prompt.splitlines()[0] if prompt else '(no prompt)'}", flush=True)
    if args.gate and args.gate[0] in prompt:
        deadline = time.monotonic() + 60
        while not os.path.exists(args.gate[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
    if args.sleep:   # simulated work: how long the agent takes, not a wait for anything
        time.sleep(args.sleep)
    for tick in range(args.ticks):
        print(f"tick {tick}", flush=True)
        if args.cost_per_tick:
            print(json.dumps({"cost": round(args.cost_per_tick * (tick + 1), 6), "tokens": 1000 * (tick + 1)}),
                  flush=True)
        time.sleep(0.3)
    if args.fail_when and args.fail_when in prompt:
        args.mode = "fail"
    if args.leave:
        with open(args.leave, "a") as out:
            out.write(f"half done: {prompt.splitlines()[0] if prompt else ''}\n")
    if args.mode == "spawn":
        child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        print(json.dumps({"child_pid": child.pid}), flush=True)
        signal.pause()   # until the bridge's signal ends it
    if args.mode == "hang":
        signal.pause()
    if args.mode == "fail":
        print("fake agent: something went wrong on purpose", flush=True)
        record(args.record, "end")
        return 3
    if os.environ.get("FORGE_BRIDGE_MODE") == "plan":   # a plan: it scribbles, but the bridge undoes it
        with open("SCRATCH.md", "w") as out:
            out.write("notes while planning\n")
        print(json.dumps({"type": "result", "session_id": session,
                          "summary": f"1. Read the code. 2. Change it for: {(prompt.splitlines() or [''])[0]}"}),
              flush=True)
        return 0
    if args.mode == "commit":
        commit(prompt, args.include)
    print(json.dumps({"type": "result", "session_id": session, "summary": f"fake agent did {args.mode}"}), flush=True)
    record(args.record, "end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
