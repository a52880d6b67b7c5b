"""Bare mirrors, per-issue worktrees, branches and pushes; every git call is an argv, never a shell."""
from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from forge_bridge.models import InvalidRef, IssueRef, RepoRef

GIT_TIMEOUT = 600
SLUG_LENGTH = 40
_NON_SLUG = re.compile(r"[^a-z0-9]+")


class GitError(RuntimeError):
    """A git command failed; the message carries git's own words (which never hold a token)."""


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    command = ["git", *args]
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} timed out after {GIT_TIMEOUT}s") from None
    if done.returncode != 0:
        raise GitError(f"git {args[0]} failed: {(done.stderr or done.stdout).strip()[-1000:]}")
    return done.stdout.strip()


def git_env(clone_url: str, token: str) -> dict[str, str]:
    """Environment for git: never prompts; for http(s) the token goes in a header, not a file or URL."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    if token and clone_url.startswith(("http://", "https://")):
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader",
                   GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}")
    return env


def slugify(title: str) -> str:
    slug = _NON_SLUG.sub("-", title.lower()).strip("-")[:SLUG_LENGTH].strip("-")
    return slug or "issue"


def branch_name(prefix: str, number: int, title: str) -> str:
    return f"{prefix}/{number}-{slugify(title)}"


def _inside(data_dir: Path, path: Path) -> Path:
    """Refuse any path that would leave data_dir, whatever a forge sent."""
    root, resolved = data_dir.resolve(), path.resolve()
    if root not in resolved.parents:
        raise InvalidRef(f"{path} is outside {root}")
    return resolved


def mirror_dir(data_dir: Path, repo: RepoRef) -> Path:
    return _inside(data_dir, data_dir / "mirrors" / f"{repo.dir_name}.git")


def worktree_dir(data_dir: Path, issue: IssueRef) -> Path:
    return _inside(data_dir, data_dir / "worktrees" / issue.dir_name)


def log_path(data_dir: Path, issue: IssueRef, task_id: str) -> Path:
    folder = _inside(data_dir, data_dir / "logs" / issue.dir_name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{task_id}.log"


def session_dir(data_dir: Path, issue: IssueRef) -> Path:
    """Files the bridge keeps for an issue's agent outside its worktree (aider's chat history, prompt files)."""
    folder = _inside(data_dir, data_dir / "sessions" / issue.dir_name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def mirror_lock(mirror: Path) -> Iterator[None]:
    """Agents of one repository share its mirror: fetches, worktree changes and pushes take turns (per host;
    each host has its own data_dir and mirror)."""
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with open(mirror.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sync_mirror(mirror: Path, clone_url: str, env: dict[str, str]) -> None:
    """Create the bare mirror on first use, then fetch every branch into refs/remotes/origin."""
    if not (mirror / "HEAD").exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        git("init", "--bare", "--quiet", str(mirror), env=env)
        git("remote", "add", "origin", clone_url, cwd=mirror, env=env)
    elif git("remote", "get-url", "origin", cwd=mirror, env=env) != clone_url:
        git("remote", "set-url", "origin", clone_url, cwd=mirror, env=env)
    git("fetch", "--prune", "--quiet", "origin", "+refs/heads/*:refs/remotes/origin/*", cwd=mirror, env=env)


def _has_ref(mirror: Path, ref: str) -> bool:
    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref], cwd=mirror, capture_output=True)
    return done.returncode == 0


# What agents leave in a worktree that is theirs, not the project's (aider's caches and histories): excluded in
# the mirror, which every worktree of the repository shares, so it is never committed and the project's own
# .gitignore is never touched.
AGENT_FILES = (".aider*",)


def exclude_agent_files(mirror: Path) -> None:
    exclude = mirror / "info" / "exclude"
    present = exclude.read_text().splitlines() if exclude.exists() else []
    missing = [pattern for pattern in AGENT_FILES if pattern not in present]
    if missing:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("\n".join([*present, *missing]) + "\n")


def ensure_worktree(mirror: Path, worktree: Path, *, branch: str, base: str) -> None:
    """The issue's worktree on its branch: reused when present, else from the branch or from the base."""
    exclude_agent_files(mirror)
    if (worktree / ".git").exists():
        return
    git("worktree", "prune", cwd=mirror)
    worktree.parent.mkdir(parents=True, exist_ok=True)
    if _has_ref(mirror, f"refs/heads/{branch}"):
        git("worktree", "add", "--quiet", str(worktree), branch, cwd=mirror)
    elif _has_ref(mirror, f"refs/remotes/origin/{branch}"):
        git("worktree", "add", "--quiet", "-b", branch, str(worktree), f"origin/{branch}", cwd=mirror)
    else:
        git("worktree", "add", "--quiet", "-b", branch, str(worktree), f"origin/{base}", cwd=mirror)


def catch_up(mirror: Path, worktree: Path, branch: str) -> None:
    """Fast-forward the worktree to the pushed branch: on another host (or by hand) the branch may have moved
    on since this worktree last ran. Local work that diverged from it is never thrown away: that is an error."""
    remote = f"refs/remotes/origin/{branch}"
    if not _has_ref(mirror, remote):
        return
    done = subprocess.run(["git", "merge-base", "--is-ancestor", remote, "HEAD"], cwd=worktree, capture_output=True)
    if done.returncode == 0:
        return  # nothing new on the remote
    try:
        git("merge", "--ff-only", "--quiet", remote, cwd=worktree)
    except GitError:
        raise GitError(f"the worktree and the pushed branch {branch} have diverged; resolve it by hand or "
                       "destroy the worktree with --force") from None


def head(worktree: Path) -> str:
    return git("rev-parse", "HEAD", cwd=worktree)


def commit_subjects(worktree: Path, old: str, new: str) -> list[str]:
    """The subjects of the commits between two heads, oldest first."""
    out = git("log", "--reverse", "--format=%h %s", f"{old}..{new}", cwd=worktree)
    return out.splitlines() if out else []


def commit_leftovers(worktree: Path, message: str, *, author: str) -> bool:
    """Commit what an agent changed but did not commit (Codex and opencode leave their edits uncommitted);
    ignored files stay out. True when a commit was made."""
    if not git("status", "--porcelain", cwd=worktree):
        return False
    git("add", "--all", cwd=worktree)
    git("-c", f"user.name={author}", "-c", f"user.email={author}@users.noreply.invalid", "commit", "--quiet",
        "--no-verify", "-m", message, cwd=worktree)
    return True


def push(worktree: Path, branch: str, env: dict[str, str]) -> None:
    git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=worktree, env=env)


def unpushed_work(worktree: Path) -> str:
    """Why removing the worktree would lose work ("" when nothing would be lost). Fetch first."""
    if not (worktree / ".git").exists():
        return ""
    if git("status", "--porcelain", cwd=worktree):
        return "the worktree has uncommitted changes"
    ahead = int(git("rev-list", "--count", "HEAD", "--not", "--remotes=origin", cwd=worktree))
    return f"{ahead} commit(s) are not on the remote" if ahead else ""


def remove_worktree(data_dir: Path, mirror: Path, worktree: Path) -> None:
    """Remove the worktree and its registration; never anything outside data_dir."""
    worktree = _inside(data_dir, worktree)
    if (mirror / "HEAD").exists() and (worktree / ".git").exists():
        git("worktree", "remove", "--force", str(worktree), cwd=mirror)
    if worktree.exists():
        shutil.rmtree(worktree)
    if (mirror / "HEAD").exists():
        git("worktree", "prune", cwd=mirror)
