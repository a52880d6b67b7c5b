"""Bare mirrors, per-issue repositories and worktrees, branches and pushes; every git call is an argv, never a shell.

Each issue's worktree has a git directory of its own (`<worktree>.git`, beside it) that borrows the mirror's
objects read-only (git alternates): an agent writes its own commits, branch and index there, and under the
sandbox sees the mirror read-only, so it cannot change what another issue's task commits or pushes. An agent can
still write its own git directory and `.git` file, so the bridge's own git never trusts them: it runs with a
minimal environment and settings that turn hooks, fsmonitor and credential helpers off, names its git directory
itself instead of reading `.git`, rewrites that directory's config, links and alternates to what the bridge made
(and drops any symbolic link an agent put there) before it runs anything there, and fetches from and pushes to
the forge's clone URL by value, never through a remote an agent could have redirected."""
from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from forge_bridge.models import InvalidRef, IssueRef, RepoRef

GIT_TIMEOUT = 600
SLUG_LENGTH = 40
_NON_SLUG = re.compile(r"[^a-z0-9]+")


class GitError(RuntimeError):
    """A git command failed; the message carries git's own words (which never hold a token)."""


# Settings every git call of the bridge carries (they win over any configuration file): no hooks, no fsmonitor
# program, no credential helper, no ext:: transport.
SAFE_SETTINGS = (("core.hooksPath", "/dev/null"), ("core.fsmonitor", "false"), ("credential.helper", ""),
                 ("protocol.ext.allow", "never"), ("core.askPass", ""))
# No automatic gc in the mirror: issues' repositories borrow its objects, and a gc there would in time prune
# those its own refs no longer reach (a branch deleted or rewritten on the forge). compact_mirror packs instead.
CANONICAL_CONFIG = ("[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
                    "[gc]\n\tauto = 0\n[maintenance]\n\tauto = false\n")
MAX_PACKS = 30   # a fetch adds a pack; past this many, housekeeping packs them into one


def git_env(clone_url: str = "", token: str = "", user: str = "x-access-token") -> dict[str, str]:
    """The bridge's git environment: no inherited variables (no secret of the bridge's), no global or system
    configuration, never a prompt; for http(s) the token goes in a header, not a file or URL (as `user`'s
password: GitHub and Gitea take any user name, GitLab wants `oauth2`)."""
    settings = list(SAFE_SETTINGS)
    if token and clone_url.startswith(("http://", "https://")):
        basic = base64.b64encode(f"{user}:{token}".encode()).decode()
        settings.append(("http.extraHeader", f"Authorization: Basic {basic}"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "HOME": "/nonexistent",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_TERMINAL_PROMPT": "0",
           "GIT_CONFIG_COUNT": str(len(settings))}
    for index, (key, value) in enumerate(settings):
        env[f"GIT_CONFIG_KEY_{index}"], env[f"GIT_CONFIG_VALUE_{index}"] = key, value
    return env


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        checkout: Checkout | None = None, input: str | None = None) -> str:
    """One git command. `checkout`: run in that worktree through the git directory the bridge made for it."""
    command = ["git", *args]
    env = dict(env or git_env())
    if checkout is not None:
        env.update(GIT_DIR=str(checkout.gitdir), GIT_WORK_TREE=str(checkout.worktree))
        cwd = checkout.worktree
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT,
                              input=input)
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} timed out after {GIT_TIMEOUT}s") from None
    if done.returncode != 0:
        raise GitError(f"git {args[0]} failed: {(done.stderr or done.stdout).strip()[-1000:]}")
    return done.stdout.strip()


ISSUE_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
# A git directory's own parts the bridge writes through: a symbolic link an agent left among them could send
# the bridge's writes (a branch, a reflog) into another issue's repository.
_OWN_PARTS = ("HEAD", "index", "packed-refs", "refs", "logs", "info", "objects", "objects/info")


@dataclass(frozen=True)
class Checkout:
    """An issue's worktree, its own git directory and the mirror whose objects that borrows; git finds its
    metadata from here, never from `.git`."""

    mirror: Path
    worktree: Path

    @property
    def gitdir(self) -> Path:
        return self.worktree.with_name(f"{self.worktree.name}.git")

    def restore(self) -> None:
        """Undo what an agent may have changed in the git metadata: the mirror's config, its own git directory's
        config, links, alternates and excludes, and the worktree's `.git` file. Call with the mirror locked."""
        restore_mirror(self.mirror)
        gitdir = self.gitdir
        if gitdir.is_symlink():   # never followed: the issue's repository is gone, and git says so
            gitdir.unlink()
        if not gitdir.is_dir():
            return
        for part in _OWN_PARTS:
            if (gitdir / part).is_symlink():
                (gitdir / part).unlink()
        for leftover in ("commondir", "gitdir", "config.worktree"):   # what would make it another's worktree
            (gitdir / leftover).unlink(missing_ok=True)
        _drop_links(gitdir / "refs", gitdir / "logs")
        (gitdir / "config").write_text(ISSUE_CONFIG)
        for folder in ("objects/info", "info", "refs"):
            (gitdir / folder).mkdir(parents=True, exist_ok=True)
        (gitdir / "objects" / "info" / "alternates").write_text(f"{self.mirror / 'objects'}\n")
        (gitdir / "info" / "exclude").write_text("".join(f"{pattern}\n" for pattern in AGENT_FILES))
        dot_git = self.worktree / ".git"
        if dot_git.is_dir() and not dot_git.is_symlink():
            shutil.rmtree(dot_git)
        else:
            dot_git.unlink(missing_ok=True)
        dot_git.write_text(f"gitdir: {gitdir}\n")


def _drop_links(*folders: Path) -> None:
    """Remove every symbolic link under these folders (refs and reflogs are plain files and folders)."""
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in [*dirs, *files]:
                if (Path(root) / name).is_symlink():
                    (Path(root) / name).unlink()


def restore_mirror(mirror: Path) -> None:
    """The mirror's config as the bridge made it: nothing an agent added (hooks, fsmonitor, filters, remotes,
    includes) survives."""
    if (mirror / "HEAD").exists():
        (mirror / "config").write_text(CANONICAL_CONFIG)


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


def spare_dir(mirror: Path) -> Path:
    """The repository's spare worktree: checked out ahead of time, so a new issue's worktree is a rename and a
    checkout of what changed since, not of every file (a 20,000-file checkout takes seconds)."""
    return mirror.parent.parent / "spares" / mirror.name.removesuffix(".git")


def log_path(data_dir: Path, issue: IssueRef, task_id: str) -> Path:
    folder = _inside(data_dir, data_dir / "logs" / issue.dir_name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{task_id}.log"


def session_dir(data_dir: Path, issue: IssueRef) -> Path:
    """Files the bridge keeps for an issue's agent outside its worktree (aider's chat history, prompt files)."""
    folder = _inside(data_dir, data_dir / "sessions" / issue.dir_name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def home_dir(data_dir: Path, issue: IssueRef) -> Path:
    """The issue's own agent HOME, with `agent.home_per_issue`."""
    return _inside(data_dir, data_dir / "homes" / issue.dir_name)


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


def compact_mirror(mirror: Path, max_packs: int = MAX_PACKS) -> bool:
    """Pack the mirror's packs into one once there are more than `max_packs`, keeping every object, reachable
    from its refs or not: an issue's repository may still need it. Call under the mirror lock. True when done."""
    if len(list((mirror / "objects" / "pack").glob("*.pack"))) <= max_packs:
        return False
    restore_mirror(mirror)
    git("repack", "-a", "-d", "-q", "--keep-unreachable", cwd=mirror)
    return True


def sync_mirror(mirror: Path, clone_url: str, env: dict[str, str]) -> None:
    """Create the bare mirror on first use, then fetch every branch from the clone URL into refs/remotes/origin."""
    if not (mirror / "HEAD").exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        git("init", "--bare", "--quiet", str(mirror), env=env)
    restore_mirror(mirror)
    git("fetch", "--prune", "--quiet", clone_url, "+refs/heads/*:refs/remotes/origin/*", cwd=mirror, env=env)


def _has_ref(ref: str, **where) -> bool:
    """Whether `ref` exists in the mirror (cwd=) or in an issue's repository (checkout=)."""
    try:
        git("rev-parse", "--verify", "--quiet", ref, **where)
    except GitError:
        return False
    return True


# What agents leave in a worktree that is theirs, not the project's (aider's caches and histories): excluded in
# the issue's git directory (info/exclude), so it is never committed and the project's own .gitignore is never
# touched.
AGENT_FILES = (".aider*",)


def refresh_remotes(checkout: Checkout) -> None:
    """The issue's copy of the mirror's remote branches (`refs/remotes/origin/*`), as the last fetch left them:
    the objects are the mirror's own (alternates), so only the refs are written."""
    wanted, present = _remote_refs(cwd=checkout.mirror), _remote_refs(checkout=checkout)
    commands = [f"update {ref} {sha}" for ref, sha in wanted.items() if present.get(ref) != sha]
    commands += [f"delete {ref}" for ref in present if ref not in wanted]
    if commands:   # only what moved: a repository may have thousands of branches
        git("update-ref", "--stdin", checkout=checkout, input="\n".join(commands) + "\n")


def _remote_refs(**where) -> dict[str, str]:
    """refs/remotes/origin/* -> commit, of the mirror (cwd=) or of an issue's repository (checkout=)."""
    listed = git("for-each-ref", "--format=%(refname) %(objectname)", "refs/remotes/origin/", **where)
    return dict(line.split(" ", 1) for line in listed.splitlines())


def _new_repository(checkout: Checkout) -> None:
    """The issue's own git directory, borrowing the mirror's objects, and the worktree's link to it."""
    shutil.rmtree(checkout.gitdir, ignore_errors=True)
    checkout.worktree.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", f"--separate-git-dir={checkout.gitdir}", str(checkout.worktree), cwd=checkout.mirror)
    checkout.restore()
    refresh_remotes(checkout)


def _adopt_linked_worktree(checkout: Checkout, branch: str, base: str) -> None:
    """A worktree made by an earlier version, as a worktree of the mirror itself: it gets a git directory of its
    own on the same branch and commit (else the pushed branch, else the base); its files, changed or not, stay as
    they are."""
    linked = checkout.mirror / "worktrees" / checkout.worktree.name
    known = _has_ref(f"refs/heads/{branch}", cwd=checkout.mirror)
    sha = git("rev-parse", f"refs/heads/{branch}", cwd=checkout.mirror) if known else ""
    (checkout.worktree / ".git").unlink(missing_ok=True)
    _new_repository(checkout)
    pushed = f"refs/remotes/origin/{branch}"
    start = sha or (pushed if _has_ref(pushed, checkout=checkout) else f"refs/remotes/origin/{base}")
    git("update-ref", f"refs/heads/{branch}", start, checkout=checkout)
    git("symbolic-ref", "HEAD", f"refs/heads/{branch}", checkout=checkout)
    git("reset", "--quiet", checkout=checkout)   # the index from the branch; the files untouched
    shutil.rmtree(linked, ignore_errors=True)


def ensure_worktree(checkout: Checkout, *, branch: str, base: str) -> None:
    """The issue's worktree on its branch: reused when present (its links restored), else the repository's spare
    moved into place, else a new one — from the branch or from the base. Call under the mirror lock."""
    worktree = checkout.worktree
    want_spare(checkout.mirror, base)
    if worktree.is_dir() and not checkout.gitdir.is_dir() and (worktree / ".git").is_file():
        _adopt_linked_worktree(checkout, branch, base)
    if worktree.is_dir() and checkout.gitdir.is_dir():   # catch_up refreshes the remote branches it reads
        checkout.restore()
        return
    worktree.parent.mkdir(parents=True, exist_ok=True)
    if _take_spare(checkout):
        refresh_remotes(checkout)
    else:
        _new_repository(checkout)
    if _has_ref(f"refs/heads/{branch}", checkout=checkout):
        switch = [branch]
    else:
        start = f"origin/{branch}" if _has_ref(f"refs/remotes/origin/{branch}", checkout=checkout) else f"origin/{base}"
        switch = ["-B", branch, start]
    # A new worktree gets every file: in parallel, one process a core (a quarter faster on 2 cores, 20,000 files).
    git("-c", "checkout.workers=0", "checkout", "--quiet", *switch, checkout=checkout)


def _spare(mirror: Path) -> Checkout:
    return Checkout(mirror, spare_dir(mirror))


def _take_spare(checkout: Checkout) -> bool:
    """Rename the spare and its git directory to the issue's; the files keep their index entries, so the
    checkout that follows touches only what differs. A spare whose setup script is still running is left."""
    spare = _spare(checkout.mirror)
    if not (spare.gitdir.is_dir() and (spare.worktree / ".git").is_file()) or checkout.gitdir.exists():
        return False
    if busy(spare.gitdir):
        return False
    spare.worktree.rename(checkout.worktree)
    spare.gitdir.rename(checkout.gitdir)
    checkout.restore()
    return True


BUSY = "forge-bridge-busy.lock"   # in a spare's git directory: held while its setup script runs


@contextmanager
def hold(gitdir: Path) -> Iterator[bool]:
    """Hold a spare while something runs in it (its setup): True when this caller holds it."""
    with open(gitdir / BUSY, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def busy(gitdir: Path) -> bool:
    if not (gitdir / BUSY).exists():
        return False
    with hold(gitdir) as held:
        return not held


def spare_of(mirror: Path) -> Checkout | None:
    """The repository's spare, once it is checked out and settled (ready to be taken), else None."""
    spare = _spare(mirror)
    ready = (spare.worktree / ".git").is_file() and (spare.gitdir / SETTLED).exists()
    return spare if ready else None


SPARE_BASE = "forge-bridge-spare-base"   # in the mirror: which branch its spare is checked out from


def want_spare(mirror: Path, base: str) -> None:
    (mirror / SPARE_BASE).write_text(base)


def prepare_spare(mirror: Path) -> bool:
    """Check out the repository's next spare, when it has none (worker housekeeping, between jobs, so no agent
    waits for it). Call under the mirror lock. True when one was made."""
    spare, wanted = _spare(mirror), mirror / SPARE_BASE
    if (spare.worktree / ".git").is_file() and spare.gitdir.is_dir():
        settle_spare(mirror)
        return False
    if not wanted.is_file():
        return False
    base = wanted.read_text().strip()
    if not _has_ref(f"refs/remotes/origin/{base}", cwd=mirror):
        return False
    shutil.rmtree(spare.worktree, ignore_errors=True)
    _new_repository(spare)   # restored first: the checkout runs no filter an agent may have configured
    git("checkout", "--quiet", "--detach", f"origin/{base}", checkout=spare)
    return True


SETTLED = "forge-bridge-settled"   # in a spare's git directory: its index was written after all its files


def settle_spare(mirror: Path) -> bool:
    """Rewrite a spare's index once a second has passed since it was checked out. Git takes a file written in
    the same second as the index for possibly changed ("racily clean") and reads it again on the next checkout:
    most of a just-made spare, so taking it would cost twice as long. True when it was settled now."""
    spare = _spare(mirror)
    try:
        if (spare.gitdir / SETTLED).exists() or time.time() - (spare.gitdir / "index").stat().st_mtime < 1.0:
            return False
    except OSError:   # no spare, or no index yet
        return False
    spare.restore()   # what the refresh reads (filters) is the bridge's configuration, not an agent's
    git("update-index", "-q", "--refresh", "--force-write-index", checkout=spare)
    (spare.gitdir / SETTLED).touch()
    return True


def catch_up(checkout: Checkout, branch: str) -> None:
    """Fast-forward the worktree to the pushed branch: on another host (or by hand) the branch may have moved
    on since this worktree last ran. Local work that diverged from it is never thrown away: that is an error."""
    remote = f"refs/remotes/origin/{branch}"
    refresh_remotes(checkout)
    if not _has_ref(remote, checkout=checkout):
        return
    try:
        git("merge-base", "--is-ancestor", remote, "HEAD", checkout=checkout)
        return  # nothing new on the remote
    except GitError:
        pass
    try:
        git("merge", "--ff-only", "--quiet", remote, checkout=checkout)
    except GitError:
        raise GitError(f"the worktree and the pushed branch {branch} have diverged; resolve it by hand or "
                       "destroy the worktree with --force") from None


def head(checkout: Checkout) -> str:
    return git("rev-parse", "HEAD", checkout=checkout)


def commit_subjects(checkout: Checkout, old: str, new: str) -> list[str]:
    """The subjects of the commits between two heads, oldest first."""
    out = git("log", "--reverse", "--format=%h %s", f"{old}..{new}", checkout=checkout)
    return out.splitlines() if out else []


def discard_changes(checkout: Checkout, head: str) -> None:
    """Back to `head`, as if the agent had not run: its commits, edits and new files go (ignored files stay)."""
    git("reset", "--hard", "--quiet", head, checkout=checkout)
    git("clean", "-fd", "--quiet", checkout=checkout)


def commit_leftovers(checkout: Checkout, message: str, *, author: str) -> bool:
    """Commit what an agent changed but did not commit (Codex and opencode leave their edits uncommitted);
    ignored files stay out. True when a commit was made."""
    if not git("status", "--porcelain", checkout=checkout):
        return False
    git("add", "--all", checkout=checkout)
    git("-c", f"user.name={author}", "-c", f"user.email={author}@users.noreply.invalid", "commit", "--quiet",
        "--no-verify", "-m", message, checkout=checkout)
    return True


def _without_signature(header: list[str]) -> list[str]:
    """A commit's header lines without a signature: a rewritten commit's old signature would not verify."""
    kept, signing = [], False
    for line in header:
        if line.startswith(("gpgsig ", "gpgsig-sha256 ")):
            signing = True
            continue
        if signing and line.startswith(" "):
            continue
        signing = False
        kept.append(line)
    return kept


def add_trailer(checkout: Checkout, trailer: str) -> int:
    """Add `trailer` (a `Co-authored-by:` line) to each commit not yet on the remote, oldest first, keeping their
    trees, authors and dates; commits already pushed are never rewritten. How many were rewritten."""
    refresh_remotes(checkout)
    commits = git("rev-list", "--reverse", "--topo-order", "HEAD", "--not", "--remotes=origin",
                  checkout=checkout).split()
    moved: dict[str, str] = {}
    for sha in commits:
        header, _, message = git("cat-file", "commit", sha, checkout=checkout).partition("\n\n")
        lines = [f"parent {moved.get(line[7:], line[7:])}" if line.startswith("parent ") else line
                 for line in _without_signature(header.split("\n"))]
        if trailer not in message:
            message = git("interpret-trailers", "--trailer", trailer, checkout=checkout, input=message + "\n")
        moved[sha] = git("hash-object", "-t", "commit", "-w", "--stdin", checkout=checkout,
                         input="\n".join(lines) + "\n\n" + message + "\n")
    if commits:
        git("update-ref", "HEAD", moved[commits[-1]], commits[-1], checkout=checkout)
    return len(commits)


# What git prints when the forge turned its credentials away (GitHub, Gitea, git's own HTTP client).
_REFUSED = re.compile(r"Authentication failed|returned error: 40[13]|Invalid username or password|could not read "
                      r"Username", re.IGNORECASE)


def refused_credentials(error: GitError) -> bool:
    return bool(_REFUSED.search(str(error)))


def push(checkout: Checkout, branch: str, clone_url: str, env: dict[str, str]) -> None:
    """To the forge's clone URL itself: no remote, pushurl or insteadOf an agent set can send it elsewhere."""
    git("push", "--quiet", clone_url, f"HEAD:refs/heads/{branch}", checkout=checkout, env=env)


def unpushed_work(checkout: Checkout) -> str:
    """Why removing the worktree would lose work ("" when nothing would be lost). Fetch first."""
    if not (checkout.worktree / ".git").exists() or not checkout.gitdir.is_dir():
        return ""
    checkout.restore()
    refresh_remotes(checkout)
    if git("status", "--porcelain", checkout=checkout):
        return "the worktree has uncommitted changes"
    ahead = int(git("rev-list", "--count", "HEAD", "--not", "--remotes=origin", checkout=checkout))
    return f"{ahead} commit(s) are not on the remote" if ahead else ""


def remove_worktree(data_dir: Path, mirror: Path, worktree: Path) -> None:
    """Remove the worktree and its git directory; never anything outside data_dir."""
    checkout = Checkout(mirror, _inside(data_dir, worktree))
    for path in (checkout.worktree, _inside(data_dir, checkout.gitdir)):
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    shutil.rmtree(mirror / "worktrees" / worktree.name, ignore_errors=True)   # an earlier version's link
