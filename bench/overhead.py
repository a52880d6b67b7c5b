"""P4 the bridge's own work per task, without the forge: against a warm mirror of a 20,000-file repository, the
git steps a task takes before and after a no-op agent (sync the mirror, make or reuse the worktree, restore what an
agent could have changed, commit leftovers, read the new commits), against a plain `git clone` of the same
repository measured in the same run. A new issue's worktree is measured both ways: from the repository's spare
(made ahead by worker housekeeping, as after a repository's first task) and checked out from nothing (the first).

Run: `.venv/bin/python bench/overhead.py [--files 20000]`."""
from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from forge_bridge.workspace import worktrees
from forge_bridge.models import IssueRef, RepoRef

RUNS = 5


def make_repository(root: Path, files: int) -> Path:
    seed = root / "seed"
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    for n in range(files):
        folder = seed / f"d{n // 500}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{n}.txt").write_text(f"file {n}\n")
    subprocess.run(["git", "-C", str(seed), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(seed), "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "seed"],
                   check=True)
    bare = root / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(bare)], check=True)
    return bare


def timed(step) -> float:
    began = time.perf_counter()
    step()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        origin = make_repository(root, args.files)
        clones = [timed(lambda n=n: subprocess.run(["git", "clone", "-q", str(origin), str(root / f"clone{n}")],
                                                  check=True)) for n in range(RUNS)]
        data, env = root / "data", worktrees.git_env(str(origin))
        mirror = worktrees.mirror_dir(data, RepoRef("h", "o", "r"))
        worktrees.sync_mirror(mirror, str(origin), env)   # warm
        created, from_spare, tasks = [], [], []
        for n in range(RUNS):
            spare = worktrees.Checkout(mirror, worktrees.worktree_dir(data, IssueRef(RepoRef("h", "o", "r"), 100 + n)))
            with worktrees.mirror_lock(mirror):
                worktrees.prepare_spare(mirror)   # housekeeping's part, between jobs: not timed
            time.sleep(1.0)   # housekeeping's next round (every 15 s) settles the spare's index
            with worktrees.mirror_lock(mirror):
                worktrees.prepare_spare(mirror)
            from_spare.append(timed(lambda c=spare, b=f"s/{n}": worktrees.ensure_worktree(c, branch=b, base="main")))
            checkout = worktrees.Checkout(mirror, worktrees.worktree_dir(data, IssueRef(RepoRef("h", "o", "r"), n + 1)))
            branch = f"b/{n}"
            created.append(timed(lambda c=checkout, b=branch: worktrees.ensure_worktree(c, branch=b, base="main")))

            def task(c=checkout, b=branch) -> None:   # a later task on the same worktree, with a no-op agent
                worktrees.sync_mirror(mirror, str(origin), env)
                worktrees.ensure_worktree(c, branch=b, base="main")
                before = worktrees.head(c)
                c.restore()
                worktrees.commit_leftovers(c, "nothing", author="bench")
                worktrees.commit_subjects(c, before, worktrees.head(c))

            tasks.append(timed(task))
        clone, make, spared, per_task = (statistics.median(x) for x in (clones, created, from_spare, tasks))
        print(f"{args.files} files: git clone {clone * 1000:.0f} ms; new worktree from the spare {spared * 1000:.0f} "
              f"ms ({spared / clone:.2f}x a clone), with no spare {make * 1000:.0f} ms ({make / clone:.2f}x); "
              f"a task's git steps on its worktree "
              f"{per_task * 1000:.0f} ms ({per_task / clone:.2f}x a clone)")


if __name__ == "__main__":
    main()
