"""Spending limits: the decisions (may a task start, has a run passed its task's limit) taken without I/O, a
meter reading a running agent's spend from its output, and the ledger of what each issue and repository spent
(Redis, atomic across workers and hosts)."""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from redis import Redis

from forge_bridge.agents import streams
from forge_bridge.config import AgentConfig, BudgetConfig
from forge_bridge.models import IssueRef

PREFIX = "budget:"                    # every outcome and reply about a limit starts so
ISSUE_KEY = "fb:spend:issue:{issue}"
REPO_KEY = "fb:spend:repo:{repo}:{day}"
LIMIT_KEY = "fb:budget:issue:{issue}"   # an issue's own limit, set with /kugetsu budget <usd>
DAY_KEPT = 3 * 24 * 3600
USAGE_WORDS = ("usage", "cost", "Cost", "tokens", "Tokens")   # lines that can carry spend; others are not kept


def money(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.4f}"


def utc_day(when: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if when is None else when))


@dataclass(frozen=True)
class Spend:
    """What an issue and its repository have spent, and the limits that apply (0: none)."""
    issue_usd: float
    issue_limit: float
    issue_limit_own: bool          # set on the issue itself, not the configuration's issue_usd
    repo_today_usd: float
    repo_limit: float


def run_over_budget(budget: BudgetConfig, cost: float, tokens: int) -> str:
    """Why a task's runs must stop now ("" while within its limits)."""
    if budget.task_usd and cost > budget.task_usd:
        return f"{PREFIX} {money(cost)} of {money(budget.task_usd)} for this task"
    if budget.task_tokens and tokens > budget.task_tokens:
        return f"{PREFIX} {tokens:,} of {budget.task_tokens:,} tokens for this task"
    return ""


def start_refused(spend: Spend, repo: str) -> str:
    """Why a task may not start ("" when it may): its issue's or its repository's budget is spent."""
    if spend.issue_limit and spend.issue_usd >= spend.issue_limit:
        return (f"{PREFIX} {money(spend.issue_usd)} of {money(spend.issue_limit)} spent on this issue; a repository "
                "admin can raise it with `/kugetsu budget <usd>`")
    if spend.repo_limit and spend.repo_today_usd >= spend.repo_limit:
        return (f"{PREFIX} {money(spend.repo_today_usd)} of {money(spend.repo_limit)} spent on {repo} today (UTC); "
                "tasks start again tomorrow")
    return ""


def describe(spend: Spend, repo: str) -> str:
    """The answer to `/kugetsu budget`."""
    issue_limit = f"limit {money(spend.issue_limit)}{' (set on this issue)' if spend.issue_limit_own else ''}" \
        if spend.issue_limit else "no limit"
    repo_limit = f"limit {money(spend.repo_limit)} a day" if spend.repo_limit else "no daily limit"
    return (f"Spent on this issue: {money(spend.issue_usd)} ({issue_limit}). Spent on {repo} today (UTC): "
            f"{money(spend.repo_today_usd)} ({repo_limit}).")


@dataclass
class RunMeter:
    """A running agent's spend as its output reports it, added to what the task spent before this run; calling
    it with new output lines answers why the run must stop ("" while within the task's limits)."""
    agent: AgentConfig
    budget: BudgetConfig
    task_cost: float = 0.0
    task_tokens: int = 0
    session_totals: dict[str, float] = field(default_factory=dict)   # a resumed session's totals before this run
    kept: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        keys = tuple(spec.removeprefix("json:") for spec in (self.agent.cost, self.agent.tokens)
                     if spec.startswith("json:"))
        self.words = USAGE_WORDS + keys   # a command agent's own keys count too

    def __call__(self, lines: list[str]) -> str:
        self.kept.extend(line for line in lines if any(word in line for word in self.words))
        cost, tokens = streams.per_run(*streams.usage_so_far(self.agent, self.kept), self.session_totals)
        return run_over_budget(self.budget, self.task_cost + cost, self.task_tokens + tokens)


class Ledger:
    def __init__(self, conn: Redis) -> None:
        self.conn = conn

    def spend(self, budget: BudgetConfig, issue: IssueRef, *, now: float | None = None) -> Spend:
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.get(ISSUE_KEY.format(issue=issue))
            pipe.get(REPO_KEY.format(repo=issue.repo, day=utc_day(now)))
            pipe.get(LIMIT_KEY.format(issue=issue))
            issue_spent, repo_spent, own = pipe.execute()
        return Spend(issue_usd=float(issue_spent or 0), issue_limit=float(own) if own is not None else budget.issue_usd,
                     issue_limit_own=own is not None, repo_today_usd=float(repo_spent or 0),
                     repo_limit=budget.repo_daily_usd)

    def add(self, issue: IssueRef, cost: float, *, now: float | None = None) -> None:
        """A run's cost, to its issue and to its repository's day, together."""
        if cost <= 0:
            return
        day_key = REPO_KEY.format(repo=issue.repo, day=utc_day(now))
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(ISSUE_KEY.format(issue=issue), cost)
            pipe.incrbyfloat(day_key, cost)
            pipe.expire(day_key, DAY_KEPT)
            pipe.execute()

    def set_issue_limit(self, issue: IssueRef, usd: float) -> None:
        self.conn.set(LIMIT_KEY.format(issue=issue), repr(usd))

    def repos_today(self, *, now: float | None = None) -> dict[str, float]:
        """Each repository's spend today, for the status page."""
        day = utc_day(now)
        found = {}
        for key in self._scan(REPO_KEY.format(repo="*", day=day)):
            repo = key.removeprefix("fb:spend:repo:").removesuffix(f":{day}")
            found[repo] = float(self.conn.get(key) or 0)
        return dict(sorted(found.items()))

    def _scan(self, pattern: str) -> Iterator[str]:
        for key in self.conn.scan_iter(match=pattern, count=500):
            yield key.decode() if isinstance(key, bytes) else key
