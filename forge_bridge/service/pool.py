"""`forge-bridge worker`'s processes on one host: event workers that never run an agent, so a stop or a command is
read while every agent slot is busy, and one agent worker per slot, so every slot fills.

They are forked from one parent after it has imported and prepared everything, so the children share its memory
instead of each paying for a fresh interpreter. They stay in the parent's process group, so a signal to the group
(serve's stop, a terminal's Ctrl-C, SIGKILL) reaches every worker and the RQ schedulers they fork, as it reached a
lone worker; a SIGTERM to the parent alone is passed on to each child. A worker that hears both takes the second
as the same stop (queue.BridgeWorker), never as RQ's cold shutdown that would kill a running agent."""
from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("forge_bridge")
RESTART_DELAY = 1.0
REAP_INTERVAL = 0.1
DRAINED = 75   # a worker's exit code when it stopped because its host drains (EX_TEMPFAIL)
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Role:
    name: str                   # events-1, agents-2…: shown in logs
    queues: tuple[str, ...]
    housekeeping: bool          # agent workers keep the host's worktrees; an event worker stays quick


def roles(event_workers: int, agent_workers: int, *, event_queues: tuple[str, ...],
          agent_queues: tuple[str, ...]) -> list[Role]:
    return [*(Role(f"events-{i + 1}", event_queues, False) for i in range(event_workers)),
            *(Role(f"agents-{i + 1}", agent_queues, True) for i in range(agent_workers))]


class Pool:
    """Forks one child per role, replaces a child that dies, and on SIGTERM or SIGINT passes a single SIGTERM to
    each child and waits for all of them (each puts its running task back in line, as a lone worker does).

    Every BEAT seconds it calls `tick`, which says whether this host's agent workers are wanted (its heartbeat is
    written there): while they are not (the host drains), each agent worker is asked once to stop — it finishes
    its running task and takes no other — and none is started again until they are wanted once more."""

    def __init__(self, roles: list[Role], run: Callable[[Role], bool],
                 tick: Callable[[], bool] = lambda: True, beat: float = 5.0) -> None:
        self.roles, self.run, self.tick, self.beat = roles, run, tick, beat
        self.children: dict[int, Role] = {}
        self.stopping = False
        self.agents_wanted = True
        self.told: set[int] = set()   # agent workers asked to stop while the host drains

    def serve(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        gc.freeze()   # what was imported stays shared with the children: no collection rewrites its pages
        next_beat = 0.0
        while not (self.stopping and not self.children):
            if not self.stopping and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.beat
                self._follow(self._wanted())
            if not self.stopping:
                for role in self._missing():
                    self._fork(role)
            self._reap()
            time.sleep(REAP_INTERVAL)

    def _wanted(self) -> bool:
        try:
            return self.tick()
        except Exception:   # Redis away: carry on as before; the workers wait for it themselves
            log.warning("worker pool: could not beat or read whether this host drains", exc_info=True)
            return self.agents_wanted

    def _follow(self, wanted: bool) -> None:
        self.agents_wanted = wanted
        if wanted:
            self.told.clear()
            return
        for pid, role in self.children.items():
            if role.housekeeping and pid not in self.told:   # an agent worker: its running task finishes first
                self.told.add(pid)
                _signal(pid, signal.SIGTERM)

    def _missing(self) -> list[Role]:
        running = list(self.children.values())
        return [role for role in self.roles if role not in running and (self.agents_wanted or not role.housekeeping)]

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            role = self.children.pop(pid, None)
            self.told.discard(pid)
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == DRAINED:   # it saw the drain before the beat did
                self.agents_wanted = False
                continue
            if role is not None and not self.stopping and (self.agents_wanted or not role.housekeeping):
                log.warning("worker %s exited (%s); starting a new one", role.name, _exit_reason(status))
                time.sleep(RESTART_DELAY)

    def _fork(self, role: Role) -> None:
        # A stop between the fork and the child's own handlers must neither run the parent's handler in the child
        # nor be lost: held back across the fork, it reaches the child once its handlers are the default ones.
        stops = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _die_with(parent)
                for sig in stops:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
                code = DRAINED if self.run(role) else 0
            except BaseException:   # a child never returns into the parent's loop
                log.exception("worker %s failed", role.name)
                code = 1
            finally:
                os._exit(code)
        self.children[pid] = role
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)

    def _stop(self, signum, frame) -> None:
        if self.stopping:
            return
        self.stopping = True
        for pid in list(self.children):
            if pid not in self.told:
                _signal(pid, signal.SIGTERM)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with(parent: int) -> None:
    """A child ends when its parent is killed outright (SIGKILL, the OOM killer), as one worker process did: no
    worker is left unwatched, and a new parent does not add its children beside the old ones."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass   # not Linux: the parent's stop still ends each child
    if os.getppid() != parent:   # the parent was gone before the line above
        os._exit(1)


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
