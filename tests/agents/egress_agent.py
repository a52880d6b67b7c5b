#!/usr/bin/env python3
"""An agent that tries the network from inside the sandbox and commits what it found (EGRESS.json): a URL through
the proxy its environment names, another through it, and a direct connection that bypasses it.

Usage: egress_agent.py ALLOWED_URL REFUSED_URL DIRECT_HOST:PORT"""
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request


def through_proxy(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:   # urllib follows HTTP_PROXY from the environment
            return f"{answer.status} {answer.read().decode().strip()}"
    except urllib.error.HTTPError as error:
        return f"{error.code}"
    except OSError as error:
        return f"failed: {type(error).__name__}"


def direct(address: str) -> str:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        return "connected"
    except OSError as error:
        return f"failed: {type(error).__name__}"


def main() -> int:
    sys.stdin.read()
    allowed, refused, bypass = sys.argv[1:4]
    found = {"allowed": through_proxy(allowed), "refused": through_proxy(refused), "direct": direct(bypass),
             "proxy": os.environ.get("HTTP_PROXY", "")}
    with open("EGRESS.json", "w") as out:
        json.dump(found, out)
    subprocess.run(["git", "add", "EGRESS.json"], check=True)
    subprocess.run(["git", "-c", "user.name=Egress Agent", "-c", "user.email=agent@example.invalid", "commit",
                    "--quiet", "-m", "what the network allowed"], check=True)
    print(json.dumps({"type": "result", "summary": "tried the network"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
