"""Confine an agent with bubblewrap: the host read-only, its worktree, its git metadata, its session files and
its HOME writable, a private /tmp and process namespace, and nothing else of data_dir or the bridge user's HOME,
nor the bridge's configuration file, a GitHub App's private key file or a Redis socket wherever they are.

Inside, the issue's own git directory is writable (a commit writes objects and its branch there) and the
repository's mirror, whose objects it borrows, is read-only: no agent can change what another issue's task of
the repository commits or pushes. What an agent writes in its own git directory (a hook, a program to run) the
bridge undoes after every run (worktrees.Checkout.restore), which also covers `sandbox = "none"`."""
from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from forge_bridge.agents import allowlist, egress, presets
from forge_bridge.workspace import worktrees
from forge_bridge.config import AgentConfig, Settings
from forge_bridge.models import IssueRef

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 10
WARNINGS_KEY = "fb:sandbox-warnings"   # host -> why its agents run without a sandbox
MODES = ("auto", "bwrap", "none")
USERNS_RESTRICTION = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")   # Ubuntu's


@dataclass(frozen=True)
class Confinement:
    """Where one agent run may write, and what more it may read."""

    worktree: Path
    gitdir: Path                      # the issue's own git directory (worktrees.Checkout.gitdir)
    mirror: Path                      # read-only: its objects are borrowed
    session_dir: Path
    home: Path
    hidden: tuple[Path, ...]          # data_dir and the bridge user's HOME
    readable: tuple[Path, ...] = ()   # agent.sandbox_paths
    masked: tuple[Path, ...] = ()     # files seen empty (and sockets refused) wherever they are: secret_files()
    empty: Path | None = None         # the empty file mounted over each of them (not /dev/null: devices are not
                                      # opened on the mounts of an unprivileged user namespace)
    network: str = "open"             # agent.network
    egress_socket: Path | None = None  # the allowlist proxy's socket (egress.running)


@dataclass(frozen=True)
class Network:
    """One run's network: its mode, the allowlist proxy's socket, and what the agent's environment gains."""
    mode: str = "open"
    socket: Path | None = None
    env: dict = field(default_factory=dict)


@contextmanager
def network(settings: Settings, env: dict[str, str], log: Path,
            count: Callable[[str], None] = lambda address: None) -> Iterator[Network]:
    """The network for a run (the setup script's and the agent's): open, none, or the allowlist through a proxy
    that runs as long as this does; each refused connection is written in `log` and handed to `count`."""
    mode = settings.agent.network
    if mode != "allowlist":
        yield Network(mode)
        return

    def refused(address: str) -> None:
        with open(log, "a") as out:
            out.write(f"forge-bridge: refused a connection to {address} (not in agent.allow_hosts)\n")
        count(address)

    allowed = allowlist.allowed_hosts(settings.agent.preset, settings.agent.allow_hosts, env)
    with egress.running(allowed, refused) as path:
        yield Network(mode, path, egress.proxy_env(allowed))


def confinement(settings: Settings, *, worktree: Path, mirror: Path, session_dir: Path, home: Path) -> Confinement:
    """One agent run's confinement under these settings; `home` is its agent_home()."""
    empty = settings.data_dir / "sandbox-empty"
    if not empty.is_file():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        empty.touch(mode=0o444)
    return Confinement(worktree=worktree, gitdir=worktrees.Checkout(mirror, worktree).gitdir, mirror=mirror,
                       session_dir=session_dir, home=home,
                       hidden=(settings.data_dir, Path.home()), masked=secret_files(settings), empty=empty,
                       readable=tuple(Path(p) for p in settings.agent.sandbox_paths))


def confined(settings: Settings, argv: list[str], *, worktree: Path, mirror: Path, session_dir: Path,
             home: Path, net: Network = Network()) -> list[str]:
    """`argv` as the agent's runs get it: inside bubblewrap when the sandbox is on, as it is otherwise."""
    if mode(settings.agent)[0] != "bwrap":
        if net.mode != "open":   # workers refuse to start so; this is the last line of defence
            raise NetworkUnconfined(f"agent.network = {net.mode!r} needs bubblewrap, which does not run here")
        return argv
    where = confinement(settings, worktree=worktree, mirror=mirror, session_dir=session_dir, home=home)
    return wrap(argv, replace(where, network=net.mode, egress_socket=net.socket))


class NetworkUnconfined(RuntimeError):
    """A network policy was asked for where no sandbox can hold it."""


def network_refusal(settings: Settings) -> str:
    """Why agent.network cannot be held here, or "": a policy other than open needs bubblewrap (and the allowlist
    socat, its relay inside the sandbox) rather than agents running with less than was asked."""
    wanted = settings.agent.network
    if wanted == "open":
        return ""
    chosen, warning = mode(settings.agent)
    if chosen != "bwrap":
        why = bwrap_works() or f"agent.sandbox = {settings.agent.sandbox!r}"
        return f"agent.network = {wanted!r} needs bubblewrap, and agents here would run without it ({why})"
    if wanted == "allowlist" and shutil.which("socat") is None:
        return "agent.network = \"allowlist\" needs socat, the relay inside the sandbox (Debian: apt-get install socat)"
    return ""


def hidden_program(settings: Settings, path_variable: str) -> str:
    """Why the agent's program cannot run in the sandbox, or "": it, the file it links to, or the interpreter its
    `#!` line names lies under a folder the sandbox hides (the bridge user's HOME, data_dir, /tmp) and no
    agent.sandbox_paths entry shows it again. Said before a run, so none ends with a bare `execvp … No such file`."""
    program = presets.executable(settings.agent)
    found = shutil.which(program, path=path_variable)
    if found is None:
        return ""   # not found at all: the run says so itself ("cannot start agent …"), as without a sandbox
    hidden = [folder for folder in (settings.data_dir, Path.home(), Path("/tmp")) if str(folder) not in ("/", "")]
    shown = [Path(p) for p in settings.agent.sandbox_paths]
    for path in _program_files(Path(found), path_variable):
        folder = next((f for f in hidden if path.is_relative_to(f)), None)
        if folder is not None and not any(path.is_relative_to(s) for s in shown):
            home = install_folder(path)
            return (f"the agent's program {path} lies under {folder}, which the sandbox hides; let the agent see "
                    f"it with agent.sandbox_paths = [\"{home}\"] (or install it outside {folder})")
    return ""


def _program_files(program: Path, path_variable: str) -> list[Path]:
    """The program as found, what its links lead to, and the interpreter of a `#!` script."""
    files = [program, program.resolve()]
    try:
        with open(files[-1], "rb") as handle:
            first = handle.readline(256)
    except OSError:
        return files
    if first.startswith(b"#!"):
        words = first[2:].decode(errors="replace").split()
        if words and words[0].endswith("/env") and len(words) > 1:
            named = shutil.which(words[1], path=path_variable)
            words = [named] if named else []
        if words:
            files += [Path(words[0]), Path(words[0]).resolve()]
    return files


def install_folder(path: Path) -> Path:
    """What to show for a program: the prefix it was installed in (`…/bin/x` -> `…`)."""
    return path.parent.parent if path.parent.name == "bin" else path.parent


def secret_files(settings: Settings) -> tuple[Path, ...]:
    """What would hand an agent the bridge's secrets or its queue when it lies outside data_dir and the HOME:
    the configuration file (it may hold redis_url with its password), each GitHub App's private key file (it
    mints installation tokens), and a Redis unix socket (whoever writes RQ's jobs chooses what workers run)."""
    found = [forge.private_key_file for forge in settings.forges if forge.private_key_file]
    if settings.source and Path(settings.source).is_file():
        found.append(settings.source)
    if settings.redis_url.startswith("unix:"):
        found.append(urlsplit(settings.redis_url).path)
    return tuple(Path(path).resolve() for path in found)   # the file itself: a mount over a link lands there anyway


def redis_exposure(settings: Settings) -> str:
    """Why confined agents could write to the bridge's Redis, or "": a network address shares the host's network
    with them, and without a password anyone there may queue an RQ job, which names the function a worker runs.
    (Unconfined agents reach everything: that is mode()'s warning.)"""
    if mode(settings.agent)[0] != "bwrap" or not settings.redis_url or settings.redis_url.startswith("unix:"):
        return ""
    address = urlsplit(settings.redis_url)
    if address.password:
        return ""
    return (f"agents share this host's network, and Redis at {address.hostname}:{address.port or 6379} asks for "
            "no password: an agent could queue a job that runs its own code in a worker, with the bridge's "
            "tokens; give Redis a password (requirepass) and put it in redis_url through FORGE_BRIDGE_REDIS_URL, "
            "or use serve's embedded server")


def agent_home(settings: Settings, issue: IssueRef | None = None) -> Path:
    """The agent's HOME, kept between runs so CLI logins and sessions survive: the one of all agents, or with
    `agent.home_per_issue` the issue's own, first made as a copy of that one (its logins and settings), so what
    one issue's agent leaves there (a CLI's hooks, a shell start file) never reaches another's."""
    shared = Path(settings.agent.home) if settings.agent.home else settings.data_dir / "agent-home"
    shared.mkdir(parents=True, exist_ok=True)
    if issue is None or not settings.agent.home_per_issue:
        return shared
    own = worktrees.home_dir(settings.data_dir, issue)
    if not own.is_dir():
        seed = own.with_name(f"{own.name}.new")   # copied aside, then renamed: a half-made copy never counts
        shutil.rmtree(seed, ignore_errors=True)
        try:
            shutil.copytree(shared, seed, symlinks=True)
        except shutil.Error as error:   # a socket or an unreadable file: the rest is copied all the same
            log.warning("the agent HOME of %s lacks what could not be copied: %s", issue, error.args[0][:3])
        seed.rename(own)
    return own


@cache
def bwrap_works() -> str:
    """"" when bubblewrap runs here; otherwise why not (probed once per process)."""
    program = shutil.which("bwrap")
    if program is None:
        return "bwrap is not installed (Debian: apt-get install bubblewrap)"
    try:
        done = subprocess.run([program, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid",
                               "--die-with-parent", "true"], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap does not run here: {error}"
    if done.returncode != 0:
        return why_bwrap_fails(done.stderr or done.stdout, userns_restricted=_userns_restricted())
    return ""


def _userns_restricted() -> bool:
    try:
        return USERNS_RESTRICTION.read_text().strip() == "1"
    except OSError:
        return False


def why_bwrap_fails(output: str, *, userns_restricted: bool) -> str:
    """bwrap's own words, and the way out where AppArmor is what stops it (Ubuntu 23.10 and later restrict
    unprivileged user namespaces to programs whose profile allows them)."""
    said = f"bwrap does not run here: {output.strip()[:200]}"
    if userns_restricted:
        said += ("; AppArmor restricts unprivileged user namespaces on this machine: give bwrap an AppArmor profile "
                 "that allows them (README, Security model)")
    return said


def mode(agent: AgentConfig) -> tuple[str, str]:
    """("bwrap" | "none", a warning when `auto` found no working bwrap)."""
    if agent.sandbox == "none":
        return "none", ""
    problem = bwrap_works()
    if agent.sandbox == "bwrap" or not problem:
        return "bwrap", ""
    return "none", f"agents run without a sandbox: {problem}"


def announce(settings: Settings, conn) -> None:
    """At a worker's start: say in the log, and for the status page, when its agents will run unconfined or could
    reach the bridge's Redis."""
    warning = redis_exposure(settings) or mode(settings.agent)[1]
    if warning:
        log.warning(warning)
        conn.hset(WARNINGS_KEY, settings.host, warning)
    else:
        conn.hdel(WARNINGS_KEY, settings.host)


def warnings(conn) -> list[str]:
    return [f"{host.decode()}: {why.decode()}" for host, why in sorted(conn.hgetall(WARNINGS_KEY).items())]


def wrap(argv: list[str], where: Confinement) -> list[str]:
    """The agent's argv, run inside bubblewrap."""
    command = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in where.hidden:
        if str(path) not in ("/", "") and path.exists():
            command += ["--tmpfs", str(path)]
    for path in where.readable:   # first: a folder shown read-only never covers one the agent may write
        if path.exists():
            command += ["--ro-bind", str(path), str(path)]
    for path in (where.home, where.worktree, where.gitdir, where.session_dir):
        command += ["--bind", str(path), str(path)]
    command += ["--ro-bind", str(where.mirror), str(where.mirror)]
    gone = [folder for folder in (*where.hidden, Path("/tmp")) if str(folder) not in ("/", "")]
    shown = (where.home, where.worktree, where.gitdir, where.mirror, where.session_dir, *where.readable)
    for path in where.masked:   # last, so no bind above uncovers them
        hidden = any(path.is_relative_to(folder) for folder in gone) and \
            not any(path.is_relative_to(folder) for folder in shown)   # under a hidden folder, not bound back
        if path.exists() and not hidden:
            command += ["--ro-bind", str(where.empty), str(path)]
    command += egress.sandbox_args(where.network, where.egress_socket)
    command += ["--unshare-pid", "--die-with-parent", "--chdir", str(where.worktree), "--setenv", "HOME",
                str(where.home), "--"]
    return command + (egress.relayed(argv) if where.network == "allowlist" else argv)
