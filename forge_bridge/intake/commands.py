"""The comment grammar: comment text -> Command | Reply | NoCommand; pure, so quoting a command never runs it."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from enum import StrEnum

from forge_bridge.config import MAX_BUDGET, ConfigError, budget_amount

HTML_COMMENT_RE = re.compile(r"<!--.*?(-->|$)", re.S)
FENCE_RE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")
QUOTE_RE = re.compile(r"^[ \t]{0,3}>")
MAX_MESSAGE = 64 * 1024


class Verb(StrEnum):
    START = "start"
    CONTINUE = "continue"
    STOP = "stop"
    RETRY = "retry"
    STATUS = "status"
    DESTROY = "destroy"
    BUDGET = "budget"
    PLAN = "plan"
    APPROVE = "approve"
    HELP = "help"


@dataclass(frozen=True)
class Command:
    verb: Verb
    message: str = ""
    force: bool = False
    mention: bool = False        # came from `@bot …` rather than the command word
    amount: float | None = None  # budget: the new limit in USD (None: just show the spend)


@dataclass(frozen=True)
class Reply:
    """Answer with this text and do nothing else (help, a mistake in the command)."""

    text: str


@dataclass(frozen=True)
class NoCommand:
    pass


def grammar(command: str, bot_login: str) -> str:
    mention = f"\n- `@{bot_login} <message>`: the same as `continue`" if bot_login else ""
    return (f"Commands (at the start of a line):\n"
            f"- `{command} start [message]`: start the agent on this issue\n"
            f"- `{command} continue <message>`: continue the issue's session{mention}\n"
            f"- `{command} plan [message]`: ask the agent for a plan only (read-only); nothing is pushed\n"
            f"- `{command} approve [notes]`: carry out the plan, in the same session\n"
            f"- `{command} stop`: cancel the queued or running task\n"
            f"- `{command} retry`: run the last failed, timed-out or cancelled task again\n"
            f"- `{command} status`: refresh the status comment\n"
            f"- `{command} destroy [--force]`: remove the issue's worktree (safely, unless --force)\n"
            f"- `{command} budget [usd]`: show what this issue and its repository spent; with an amount, set this "
            f"issue's limit (repository admins; 0: no limit)\n"
            f"- `{command} help`: this list")


def visible_lines(text: str) -> list[str]:
    """The lines a command may stand on: without HTML comments, fenced code and quoted lines."""
    text = HTML_COMMENT_RE.sub("", text.replace("\r\n", "\n"))
    lines, fence = [], ""
    for line in text.split("\n"):
        opening = FENCE_RE.match(line)
        if fence:
            if opening and opening[1][0] == fence[0] and len(opening[1]) >= len(fence):
                fence = ""
            continue
        if opening:
            fence = opening[1]
            continue
        if not QUOTE_RE.match(line):
            lines.append(line)
    return lines


def _rest(first: str, following: list[str]) -> str:
    return "\n".join([first, *following]).strip()[:MAX_MESSAGE]


def _budget_command(args: str, *, command: str) -> Command | Reply:
    words = args.split()
    if not words:
        return Command(Verb.BUDGET)
    try:
        if len(words) > 1:
            raise ConfigError("one amount")
        return Command(Verb.BUDGET, amount=budget_amount(words[0], where="the amount"))
    except ConfigError:
        return Reply(f"`{command} budget` takes one amount in USD from 0 (no limit) to {MAX_BUDGET:,.0f}, like "
                     f"`{command} budget 5`.")


def _verb_command(word: str, args: str, following: list[str], *, command: str, bot_login: str) -> Command | Reply:
    if not word:
        return Reply(grammar(command, bot_login))
    try:
        verb = Verb(word.lower())
    except ValueError:
        guess = difflib.get_close_matches(word.lower(), [v.value for v in Verb], n=1)
        hint = f" Did you mean `{command} {guess[0]}`?" if guess else ""
        return Reply(f"Unknown command `{command} {word[:40]}`.{hint}\n\n{grammar(command, bot_login)}")
    if verb is Verb.HELP:
        return Reply(grammar(command, bot_login))
    if verb is Verb.DESTROY:
        extra = args.split()
        if any(a != "--force" for a in extra):
            return Reply(f"`{command} destroy` takes only `--force`.")
        return Command(verb, force=bool(extra))
    if verb is Verb.BUDGET:
        return _budget_command(args, command=command)
    message = _rest(args, following) if verb in (Verb.START, Verb.CONTINUE, Verb.PLAN, Verb.APPROVE) else ""
    if verb is Verb.CONTINUE and not message:
        return Reply(f"`{command} continue` needs a message: `{command} continue <what to do next>`.")
    return Command(verb, message=message)


def parse_comment(text: str, *, command: str = "/kugetsu", bot_login: str = "") -> Command | Reply | NoCommand:
    """The first command at the start of a visible line; everything after it on that line and below is its
    message. `@bot <message>` is a continue."""
    lines = visible_lines(text)
    mention = f"@{bot_login}".lower() if bot_login else None
    for index, line in enumerate(lines):
        stripped = line.strip()
        head, _, tail = stripped.partition(" ")
        if head == command:
            word, _, args = tail.strip().partition(" ")
            return _verb_command(word, args.strip(), lines[index + 1:], command=command, bot_login=bot_login)
        if mention and head.lower().rstrip(",:") == mention:
            message = _rest(tail.strip(), lines[index + 1:])
            if not message:
                return Reply(grammar(command, bot_login))
            return Command(Verb.CONTINUE, message=message, mention=True)
    return NoCommand()


def mentions(text: str, bot_login: str) -> bool:
    """`@bot` anywhere in the visible text (how a comment on the bridge's pull request addresses it)."""
    if not bot_login:
        return False
    pattern = re.compile(rf"(?<![\w@])@{re.escape(bot_login)}(?![\w-])", re.I)
    return any(pattern.search(line) for line in visible_lines(text))
