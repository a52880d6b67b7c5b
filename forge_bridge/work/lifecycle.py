"""Worktrees over time: safe destroy (only when nothing would be lost, or with --force; the session is archived),
garbage collection, and the spare worktrees made ahead of need (set up by the repository's script ahead too)."""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from forge_bridge.agents import presets, sandbox
from forge_bridge.workspace import worktrees
from forge_bridge.work import setup
from forge_bridge.config import Settings
from forge_bridge.forges import ForgeClient
from forge_bridge.models import IssueRef, shown_number
from forge_bridge.store import queue
from forge_bridge.store.sessions import Store

log = logging.getLogger(__name__)
SPARE_SETUP_LOG = "forge-bridge-setup.log"   # in a spare's git directory: what its setup script printed


@dataclass(frozen=True)
class DestroyOutcome:
    destroyed: bool
    message: str


def _refusal(store: Store, client: ForgeClient, ref: IssueRef, settings: Settings) -> str:
    """Why destroying now would lose something, or "" when it would not."""
    session = store.session(ref)
    if session.pull_request_number:
        pull = client.get_pull(ref.repo, session.pull_request_number)
        if pull.state == "open":
            return f"pull request {shown_number(pull.number)} is still open"
    worktree = worktrees.worktree_dir(settings.data_dir, ref)
    if session.worktree and worktree.exists():
        repo = client.get_repo(ref.repo)
        checkout = worktrees.Checkout(worktrees.mirror_dir(settings.data_dir, ref.repo), worktree)
        with worktrees.mirror_lock(checkout.mirror):
            worktrees.sync_mirror(checkout.mirror, repo.clone_url,
                                  worktrees.git_env(repo.clone_url, client.git_token(ref.repo), client.git_user))
            checkout.restore()
        return worktrees.unpushed_work(checkout)
    return ""


def safe_destroy(settings: Settings, store: Store, client: ForgeClient, ref: IssueRef, *,
                 force: bool) -> DestroyOutcome:
    session = store.session(ref)
    if session is None or (session.archived and not session.worktree):
        return DestroyOutcome(False, "Nothing to destroy: this issue has no worktree.")
    latest = store.latest_task(session)
    if latest and not latest.state.finished:  # never pull a worktree from under a running agent
        return DestroyOutcome(False, f"Not destroying: task {latest.id} is {latest.state.value}; stop it first.")
    if not force:
        reason = _refusal(store, client, ref, settings)
        if reason:
            return DestroyOutcome(False, f"Not destroying: {reason}. Use `{settings.command} destroy --force` to "
                                         "destroy anyway.")
    mirror = worktrees.mirror_dir(settings.data_dir, ref.repo)
    with worktrees.mirror_lock(mirror):
        worktrees.remove_worktree(settings.data_dir, mirror, worktrees.worktree_dir(settings.data_dir, ref))
    shutil.rmtree(worktrees.home_dir(settings.data_dir, ref), ignore_errors=True)   # agent.home_per_issue
    session.worktree, session.archived = "", True
    store.save_session(session)
    return DestroyOutcome(True, f"Destroyed the worktree of {ref}; the session is archived.")


def collect_garbage(settings: Settings, store: Store) -> list[Path]:
    """Remove worktrees no live session owns, then prune each mirror's worktree list. A worktree whose issue
    has a queued or running task is never touched. Kept by issue, on this host's path: with several hosts a
    session names the worktree of the host that ran its last task, and this host's copy is the issue's all the
    same (its next task may run here)."""
    root = settings.data_dir / "worktrees"
    if not root.is_dir():
        return []
    keep: set[str] = set()
    for issue in store.session_ids():
        session = store.session(issue)
        latest = store.latest_task(session)
        if session and (not session.archived or (latest and not latest.state.finished)):
            keep |= {str(worktrees.worktree_dir(settings.data_dir, IssueRef.from_str(issue)).resolve()),
                     *([session.worktree] if session.worktree else [])}
    removed = []
    for path in sorted(root.iterdir()):   # a worktree, or the git directory beside it (<worktree>.git)
        if str(path.with_name(path.name.removesuffix(".git")).resolve()) not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    homes = settings.data_dir / "homes"   # agent.home_per_issue: an issue's HOME goes with its worktree
    for path in sorted(homes.iterdir()) if homes.is_dir() else []:
        if str((root / path.name.removesuffix(".new")).resolve()) not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for mirror in sorted((settings.data_dir / "mirrors").glob("*.git")):
        with worktrees.mirror_lock(mirror):
            worktrees.git("worktree", "prune", cwd=mirror)
    return removed


def prepare_spares(data_dir: Path) -> list[Path]:
    """Give every repository that has had a task its next spare worktree (see worktrees.spare_dir), its mirror's
    packs compacted when they are many; a mirror that cannot is logged and skipped."""
    made = []
    for mirror in sorted((data_dir / "mirrors").glob("*.git")):
        try:
            with worktrees.mirror_lock(mirror):
                worktrees.compact_mirror(mirror)
                if worktrees.prepare_spare(mirror):
                    made.append(worktrees.spare_dir(mirror))
        except (worktrees.GitError, OSError) as error:
            log.warning("no spare worktree for %s: %s", mirror.name, error)
    return made


def set_up_spares(settings: Settings) -> list[Path]:
    """Run the repository's setup script in each ready spare that has not run this version of it, in the
    agents' sandbox, shared HOME and environment, so the issue that takes the spare finds it prepared. A spare is
    held while its setup runs: an issue arriving meanwhile makes a worktree of its own."""
    done = []
    for mirror in sorted((settings.data_dir / "mirrors").glob("*.git")):
        spare = worktrees.spare_of(mirror)
        if spare is None:
            continue
        with worktrees.hold(spare.gitdir) as held:
            if not held:
                continue
            try:
                ran = _set_up_spare(settings, spare, mirror)
            except (setup.SetupFailed, sandbox.NetworkUnconfined, OSError) as error:
                log.warning("the spare worktree of %s is not set up: %s", mirror.name, str(error).splitlines()[0])
                continue
            if ran.result is not None:
                done.append(spare.worktree)
    return done


def _set_up_spare(settings: Settings, spare: worktrees.Checkout, mirror: Path) -> setup.Ran:
    """The setup script in a spare, as an agent's run would have it: sandbox, shared HOME, network policy."""
    home, log_file = sandbox.agent_home(settings), spare.gitdir / SPARE_SETUP_LOG
    env = presets.agent_env(settings.agent, {"HOME": str(home), "FORGE_BRIDGE_MODE": "setup"})
    with sandbox.network(settings, env, log_file) as net:
        return setup.run_if_needed(settings, spare, env={**env, **net.env}, log=log_file, confine=lambda argv: (
            sandbox.confined(settings, argv, worktree=spare.worktree, mirror=mirror, session_dir=spare.gitdir,
                             home=home, net=net)))


def housekeeping(settings: Settings, store: Store) -> None:
    """A worker's periodic work on its host, between jobs."""
    queue.release_gone_hosts(store.conn, queue.Scheduler(store.conn, settings.max_concurrent_agents,
                                                         settings.task_timeout))
    collect_garbage(settings, store)
    prepare_spares(settings.data_dir)
    set_up_spares(settings)
