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
    each child and waits for all of them (each puts its running task back in line, as a lone worker does)."""

    def __init__(self, roles: list[Role], run: Callable[[Role], None]) -> None:
        self.roles, self.run = roles, run
        self.children: dict[int, Role] = {}
        self.stopping = False

    def serve(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        gc.freeze()   # what was imported stays shared with the children: no collection rewrites its pages
        for role in self.roles:
            self._fork(role)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            role = self.children.pop(pid, None)
            if role is None or self.stopping:
                continue
            log.warning("worker %s exited (%s); starting a new one", role.name, _exit_reason(status))
            time.sleep(RESTART_DELAY)
            if not self.stopping:
                self._fork(role)

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
                self.run(role)
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
            try:
                os.kill(pid, signal.SIGTERM)
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
