"""The `forge-bridge` command: serve, web, worker, poll; errors are one clear line and a non-zero exit."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from functools import cache
from pathlib import Path

from forge_bridge.agents import sandbox
from forge_bridge.forges import app_reach
from forge_bridge.store import embedded, hosts, queue
from forge_bridge.config import CONFIG_ENV, ConfigError, Settings, check_http_url, load_settings
from forge_bridge.forges import ForgeError, make_client, preload
from forge_bridge.forges.identity import with_bot_logins
from forge_bridge.service.supervisor import Stopping, Supervisor, raise_on_signals, received_environ
from forge_bridge.service.pool import Pool, Role, roles

log = logging.getLogger("forge_bridge")
FOLLOW_INTERVAL = 0.5
CHECK_MARKS = {True: "ok  ", False: "FAIL", None: "warn"}


DRAIN_POLL = 1.0   # `drain --wait` looks again this often
STOP_GRACE = 30.0  # a worker's SIGTERM drains it this long before its agents are stopped (serve's: at once)


class UsageError(Exception):
    """A mistake of the user's: printed as one line, exit code 2."""


def _configure_logging(settings: Settings) -> None:
    from forge_bridge import logs

    logs.configure(settings.log_format)


def _need_redis(settings: Settings, role: str) -> None:
    if not settings.redis_url:
        raise UsageError(f"`forge-bridge {role}` needs redis_url (set it in {settings.source} or "
                         f"FORGE_BRIDGE_REDIS_URL); use `forge-bridge serve` to run everything on one machine")


def _reach_redis(settings: Settings, role: str) -> str:
    """The configured redis_url, else the embedded server of a `serve` running with the same data_dir."""
    if settings.redis_url:
        return settings.redis_url
    if embedded.answers(settings.data_dir):
        return embedded.url_for(settings.data_dir)
    raise UsageError(f"`forge-bridge {role}`: no `forge-bridge serve` is running for data_dir {settings.data_dir} and "
                     f"no redis_url is set; start `forge-bridge serve` with the same configuration ({settings.source})")


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    _need_redis(settings, "web")
    from forge_bridge.web import check_exposure, create_app
    from forge_bridge.web.server import run_gunicorn

    bind = args.bind or (f"0.0.0.0:{os.environ['PORT']}" if os.environ.get("PORT") else settings.bind)
    if warning := check_exposure(settings, bind):
        log.warning(warning)
    settings = with_bot_logins(settings, queue.connect(settings.redis_url))
    run_gunicorn(create_app(settings), bind=bind)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    _need_redis(settings, "worker")
    if refusal := sandbox.network_refusal(settings):   # no agent runs with less than was asked
        raise UsageError(f"`forge-bridge worker` will not start: {refusal}")
    import jobs.tasks
    from forge_bridge.work.lifecycle import housekeeping
    from forge_bridge.store.sessions import Store

    preload(settings.forges)
    conn = queue.connect(settings.redis_url)
    settings = with_bot_logins(settings, conn)
    jobs.tasks.configure(settings)  # every forked job inherits these
    app_reach.survey(settings, conn)
    sandbox.announce(settings, conn)
    if args.burst:   # one process on both queues until they are empty
        queue.work(conn, burst=True, housekeeping=lambda: housekeeping(settings, Store(conn)))
        return 0

    def run(role: Role) -> bool:
        own = queue.connect(settings.redis_url)   # never a connection of the parent's
        if not role.housekeeping:   # an event worker: it reads events whatever its host does
            return queue.work(own, queues=role.queues)
        scheduler = queue.Scheduler(own, settings.max_concurrent_agents, settings.task_timeout)
        return queue.work(own, queues=role.queues, housekeeping=lambda: housekeeping(settings, Store(own)),
                          drains=lambda: hosts.draining(own, settings.host),
                          pull_waiting=lambda: scheduler.pull_waiting(settings.host), stop_grace=args.stop_grace)

    def tick() -> bool:   # this host's heartbeat; its agent workers are wanted unless it drains
        hosts.beat(conn, settings.host, agent_workers=settings.agent_workers)
        return not hosts.draining(conn, settings.host)

    log.info("worker %s: %d event worker(s), %d agent worker(s)", settings.host, settings.event_workers,
             settings.agent_workers)
    agent_queues = (queue.host_queue(settings.host), *queue.AGENT_QUEUES)   # its own issues' tasks first
    try:
        Pool(roles(settings.event_workers, settings.agent_workers, event_queues=queue.EVENT_QUEUES,
                   agent_queues=agent_queues), run, tick=tick, beat=hosts.BEAT_INTERVAL).serve()
    finally:
        hosts.leave(conn, settings.host)
    return 0


def cmd_drain(settings: Settings, args: argparse.Namespace) -> int:
    """A host takes no new tasks while its running ones finish (`--off`, or `undrain`: it takes them again)."""
    conn = queue.connect(_reach_redis(settings, "drain"))
    host = args.host or settings.host
    hosts.set_draining(conn, host, not args.off)
    if args.off:
        print(f"{host}: takes tasks again")
        return 0
    print(f"{host}: draining: no new tasks; {hosts.running_on(conn, host)} running task(s) finish")
    while args.wait and hosts.running_on(conn, host):
        time.sleep(DRAIN_POLL)
    if args.wait:
        print(f"{host}: drained, no task running")
    return 0


def cmd_poll(settings: Settings, args: argparse.Namespace) -> int:
    _need_redis(settings, "poll")
    from forge_bridge.intake.poller import Poller

    conn = queue.connect(settings.redis_url)
    settings = with_bot_logins(settings, conn)
    client_for = cache(lambda name: make_client(settings.forge(name), conn=conn))
    poller = Poller(settings, conn, client_for)
    if args.once:
        print(f"handed {poller.poll_once()} event(s) to intake")
        return 0
    raise_on_signals()
    try:
        poller.run()
    except Stopping:
        pass
    return 0


def _operator_intake(settings: Settings, ref_text: str, role: str):
    """Intake for a command given on this machine: the operator is trusted, the issue ref is checked."""
    import getpass

    from forge_bridge.intake.handler import Intake
    from forge_bridge.models import EventKind, ForgeEvent, InvalidRef
    from forge_bridge.refs import find_issue_ref
    from forge_bridge.store.sessions import Store

    redis_url = _reach_redis(settings, role)
    default = settings.default_forge
    try:
        ref = find_issue_ref(ref_text, default_host=default.host if default else None)
    except InvalidRef as error:
        raise UsageError(str(error)) from None
    if ref is None:
        raise UsageError(f"no issue ref in {ref_text!r} (expected host/owner/repo#N, owner/repo#N or an issue URL)")
    forge = settings.forge_for_host(ref.repo.host)
    if forge is None:
        raise UsageError(f"no configured forge serves {ref.repo.host}")
    conn = queue.connect(redis_url)
    settings = with_bot_logins(settings, conn)
    intake = Intake(settings, Store(conn), make_client(forge, conn=conn),
                    queue.Scheduler(conn, settings.max_concurrent_agents, settings.task_timeout))
    event = ForgeEvent(forge=forge.name, kind=EventKind.COMMENT, issue=ref, sender=getpass.getuser(), source="cli")
    return intake, event, ref


def cmd_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from forge_bridge.intake.commands import Command, Verb

    intake, event, ref = _operator_intake(settings, args.issue_ref, "enqueue")
    message = " ".join(args.message).strip()
    if not message:
        raise UsageError("enqueue needs a message: forge-bridge enqueue <issue-ref> <message>")
    with intake.store.issue_lock(ref):
        print(f"{ref}: {intake.continue_(Command(Verb.CONTINUE, message=message), event, ref)}")
    return 0


def cmd_stop(settings: Settings, args: argparse.Namespace) -> int:
    from forge_bridge.intake.commands import Command, Verb

    intake, event, ref = _operator_intake(settings, args.issue_ref, "stop")
    print(f"{ref}: {intake.act(Command(Verb.STOP), event, ref)}")
    return 0


def cmd_destroy(settings: Settings, args: argparse.Namespace) -> int:
    from forge_bridge.intake.commands import Command, Verb

    intake, event, ref = _operator_intake(settings, args.issue_ref, "destroy")
    with intake.store.issue_lock(ref):
        message = intake.destroy(Command(Verb.DESTROY, force=args.force), event, ref)
    print(f"{ref}: {message}")
    return 0 if message.startswith("Destroyed") else 1


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from forge_bridge.web.overview import overview

    view = overview(queue.connect(_reach_redis(settings, "status")), settings)
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    print(f"agent slots: {view['slots']['in_use']} of {view['slots']['limit']} in use; "
          + ", ".join(f"{name}: {depth} waiting" for name, depth in view["queues"].items()))
    for task in [*view["running"], *view["queued"]]:
        print(f"  {task['state']:<9} {task['id']}  {task['issue']}  {task['action']} by @{task['requested_by']}")
    for task in view["recent"]:
        print(f"  {task['state']:<9} {task['id']}  {task['issue']}  {task['duration']:.0f}s  {task['outcome']}")
    for session in view["sessions"]:
        where = session["pull_request_url"] or session["branch"] or "(no branch yet)"
        print(f"  session   {session['issue']}  {where}{'  [archived]' if session['archived'] else ''}")
    for host in view["hosts"]:
        print(f"  host      {host['id']}  heartbeat {host['heartbeat_age']:.0f}s ago  {host['running']} running"
              f"{'  [draining]' if host['draining'] else ''}{'  [gone]' if not host['alive'] else ''}")
    for warning in view["warnings"]:
        print(f"warning: {warning}")
    return 0


def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    from forge_bridge.workspace import worktrees
    from forge_bridge.store.sessions import Store

    intake, _, ref = _operator_intake(settings, args.issue_ref, "logs")
    store: Store = intake.store
    task = store.latest_task(store.session(ref))
    if task is None:
        raise UsageError(f"{ref} has no task yet")
    log_file, offset = worktrees.log_path(settings.data_dir, ref, task.id), 0
    while True:
        if log_file.exists():
            with open(log_file, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        if not args.follow or store.task(task.id).state.finished:
            return 0
        time.sleep(FOLLOW_INTERVAL)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    import hashlib

    from forge_bridge.intake.admission import REPLAY_PREFIX, admit
    from forge_bridge.store.sessions import Store
    from forge_bridge.intake.webhooks import DeliveryHeaders, Ignored, WebhookError, parse_delivery

    redis_url = _reach_redis(settings, "replay")
    forge = settings.forge(args.forge)
    body = Path(args.payload).read_bytes()
    delivery = f"replay-{hashlib.sha256(body).hexdigest()[:16]}"
    headers = DeliveryHeaders(kind=forge.kind, event=args.event, event_type="", delivery=delivery, signature="")
    try:
        parsed = parse_delivery(headers, body, forge=forge.name, host=forge.host)
    except WebhookError as error:
        raise UsageError(f"{args.payload}: {error}") from None
    if isinstance(parsed, Ignored):
        print(f"ignored: {parsed.reason}")
        return 0
    admitted = admit(settings, Store(queue.connect(redis_url)), parsed, endpoint=f"{REPLAY_PREFIX}{forge.name}")
    print(f"{admitted.status}: {admitted.reason}")
    return 0


def cmd_hooks(settings: Settings, args: argparse.Namespace) -> int:
    from forge_bridge.service import hooks

    public_url = check_http_url(args.url, where="--url") if args.url else settings.public_url
    if args.action == "install" and not public_url:
        raise UsageError("hooks install needs the bridge's public URL: --url https://bridge.example.com "
                         f"(or public_url in {settings.source})")
    failures = 0
    for forge in settings.forges:
        client = make_client(forge)
        lines = (hooks.install(settings, forge, client, public_url=public_url, dry_run=args.dry_run)
                 if args.action == "install" else hooks.listing(settings, forge, client, public_url=public_url))
        for ok, line in lines:
            print(f"{'' if ok else 'FAIL '}{line}", flush=True)
            failures += not ok
    return 1 if failures else 0


def cmd_github_app(settings: Settings, args: argparse.Namespace) -> int:
    from forge_bridge.forges import app_setup

    public_url = check_http_url(args.url, where="--url") if args.url else settings.public_url
    if not public_url:
        raise UsageError("github-app create needs the bridge's public URL: --url https://bridge.example.com "
                         f"(or public_url in {settings.source})")
    forge = app_setup.github_forge(settings, args.forge or "")
    created = app_setup.run_setup(settings, public_url=public_url, org=args.org or "", name=args.name,
                                  bind=args.bind or settings.bind, forge_name=forge.name)
    print(f"Created GitHub App {created.slug} (id {created.id}); its key and webhook secret are in "
          f"{created.folder} (mode 0600). Configuration:\n")
    print(app_setup.configuration_lines(forge, created), flush=True)
    return 0


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from forge_bridge.service.checks import run_checks

    # Each check says in its own line what failed; urllib3's warning for each retry on the way is noise here.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    print(f"ok   configuration {settings.source} is valid", flush=True)
    failures = 0
    for ok, line in run_checks(settings):   # ok is None for a warning
        print(f"{CHECK_MARKS[ok]} {line}", flush=True)
        failures += ok is False
    print("all checks passed" if not failures else f"{failures} check(s) failed")
    return 1 if failures else 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from forge_bridge.web import check_exposure, require_webhook_secrets

    require_webhook_secrets(settings)  # refuse before starting anything
    if refusal := sandbox.network_refusal(settings):
        raise UsageError(f"`forge-bridge serve` will not start: {refusal}")
    check_exposure(settings, args.bind or settings.bind)
    supervisor = Supervisor(settings, bind=args.bind or settings.bind)
    raise_on_signals()
    try:
        supervisor.start()
        supervisor.watch()
    except Stopping:
        pass
    finally:
        supervisor.shutdown()
    print("forge-bridge: stopped", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forge-bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help=f"configuration file (default: ${CONFIG_ENV} or ./forge-bridge.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="everything on one machine, with an embedded Redis-compatible server")
    serve.add_argument("--bind", help="HOST:PORT for the web app")
    serve.set_defaults(run=cmd_serve)
    web = sub.add_parser("web", help="the web app only (needs redis_url)")
    web.add_argument("--bind", help="HOST:PORT (default: $PORT, else bind from the configuration)")
    web.set_defaults(run=cmd_web)
    worker = sub.add_parser("worker", help="this host's workers: `event_workers` for events, `workers` for agents "
                                           "(needs redis_url)")
    worker.add_argument("--burst", action="store_true", help="one process on both queues; exit when they are empty")
    worker.add_argument("--stop-grace", type=float, default=STOP_GRACE, metavar="SECONDS",
                        help=f"on SIGTERM, how long running agents may still finish (default {STOP_GRACE:.0f})")
    worker.set_defaults(run=cmd_worker)
    poll = sub.add_parser("poll", help="the poller (needs redis_url)")
    poll.add_argument("--once", action="store_true", help="poll once and exit")
    poll.set_defaults(run=cmd_poll)
    enqueue = sub.add_parser("enqueue", help="queue a task by hand (continues the session, or starts one)")
    enqueue.add_argument("issue_ref", help="host/owner/repo#N, owner/repo#N, an issue URL, or a sentence with one")
    enqueue.add_argument("message", nargs="*")
    enqueue.set_defaults(run=cmd_enqueue)
    check = sub.add_parser("check", help="validate the configuration, reach each forge, check tokens and permissions")
    check.set_defaults(run=cmd_check)
    status = sub.add_parser("status", help="agent slots, queue, running tasks, sessions")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)
    logs = sub.add_parser("logs", help="the agent log of an issue's latest task")
    logs.add_argument("issue_ref")
    logs.add_argument("--follow", action="store_true", help="keep printing until the task ends")
    logs.set_defaults(run=cmd_logs)
    destroy = sub.add_parser("destroy", help="safe destroy of an issue's worktree")
    destroy.add_argument("issue_ref")
    destroy.add_argument("--force", action="store_true", help="even with an open pull request or unpushed work")
    destroy.set_defaults(run=cmd_destroy)
    replay = sub.add_parser("replay", help="feed a saved delivery as if it arrived")
    replay.add_argument("payload", help="the delivery's JSON body, as saved")
    replay.add_argument("--forge", required=True, help="the configured forge's name")
    replay.add_argument("--event", required=True, help="the event name (X-GitHub-Event / X-Gitea-Event)")
    replay.set_defaults(run=cmd_replay)
    hooks = sub.add_parser("hooks", help="the bridge's webhook on each configured repository")
    hooks.add_argument("action", choices=["install", "list"], help="install: create or update; list: show them")
    hooks.add_argument("--url", help="the bridge's public URL (default: public_url of the configuration)")
    hooks.add_argument("--dry-run", action="store_true", help="say what install would change, change nothing")
    hooks.set_defaults(run=cmd_hooks)
    github_app = sub.add_parser("github-app", help="set up a GitHub App for the bridge (GitHub's manifest flow)")
    github_app.add_argument("action", choices=["create"])
    github_app.add_argument("--url", help="the bridge's public URL, where GitHub sends the browser back "
                                          "(default: public_url of the configuration)")
    github_app.add_argument("--org", help="create the App in this organization (default: your account)")
    github_app.add_argument("--name", default="forge-bridge", help="the App's name on GitHub (unique there)")
    github_app.add_argument("--forge", help="the configured GitHub forge (GitHub Enterprise); default github.com")
    github_app.add_argument("--bind", help="listen here while it runs (default: bind of the configuration)")
    github_app.set_defaults(run=cmd_github_app)
    drain = sub.add_parser("drain", help="a host takes no new tasks; its running ones finish")
    drain.add_argument("--host", default="", help="the host's id (default: this one's host_id)")
    drain.add_argument("--wait", action="store_true", help="return once no task runs there")
    drain.add_argument("--off", action="store_true", help="take tasks again (as undrain)")
    drain.set_defaults(run=cmd_drain)
    undrain = sub.add_parser("undrain", help="a drained host takes tasks again")
    undrain.add_argument("--host", default="", help="the host's id (default: this one's host_id)")
    undrain.set_defaults(run=cmd_drain, wait=False, off=True)
    stop = sub.add_parser("stop", help="cancel an issue's queued tasks and stop its running agent")
    stop.add_argument("issue_ref")
    stop.set_defaults(run=cmd_stop)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config, environ=received_environ())
        _configure_logging(settings)
        return args.run(settings, args)
    except (ConfigError, UsageError, ForgeError, OSError) as error:
        print(f"forge-bridge: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
