"""Prometheus metrics, kept in Redis and collected at scrape time, so every process (web, workers, poller, on
every host) counts toward the same numbers."""
from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from redis import Redis
from redis.exceptions import RedisError

from forge_bridge.store import queue
from forge_bridge.config import Settings
from forge_bridge.models import TaskState
from forge_bridge.store.sessions import PREFIX, Store

DELIVERIES = f"{PREFIX}:metrics:deliveries"
FORGE_CALLS = f"{PREFIX}:metrics:forge_calls"
QUOTA = f"{PREFIX}:metrics:quota"
AGENT_COST = f"{PREFIX}:metrics:agent_cost"
AGENT_TOKENS = f"{PREFIX}:metrics:agent_tokens"
EGRESS_REFUSED = f"{PREFIX}:metrics:egress_refused"   # host:port -> connections an agent was refused
EGRESS_RECENT = f"{PREFIX}:egress:recent"             # the latest refusals, for the status page
RECENT_REFUSALS = 20
RUN_BUCKETS = (10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
TASK_WINDOW = 1000   # tasks by state and run times are over the most recent ones


def count(conn: Redis, key: str, *labels: str) -> None:
    """Best effort: a metric must never fail the work it measures."""
    try:
        conn.hincrby(key, "|".join(labels), 1)
    except RedisError:
        pass


def add_usage(conn: Redis, forge: str, repo: str, preset: str, *, cost: float, tokens: int) -> None:
    """A run's spend, by forge, repository and preset. Best effort, like every count."""
    field = "|".join((forge, repo, preset))
    try:
        with conn.pipeline(transaction=False) as pipe:
            pipe.hincrbyfloat(AGENT_COST, field, cost)
            pipe.hincrby(AGENT_TOKENS, field, tokens)
            pipe.execute()
    except RedisError:
        pass


def refused_egress(conn: Redis, issue: str, address: str) -> None:
    """An agent's connection the allowlist refused: counted by host, and kept among the latest for the page."""
    try:
        with conn.pipeline(transaction=False) as pipe:
            pipe.hincrby(EGRESS_REFUSED, address, 1)
            pipe.lpush(EGRESS_RECENT, f"{time.time():.0f}|{issue}|{address}")
            pipe.ltrim(EGRESS_RECENT, 0, RECENT_REFUSALS - 1)
            pipe.execute()
    except RedisError:
        pass


def recent_refusals(conn: Redis) -> list[dict[str, Any]]:
    rows = [raw.decode().split("|", 2) for raw in conn.lrange(EGRESS_RECENT, 0, -1)]
    return [{"at": float(at), "issue": issue, "host": address} for at, issue, address in rows]


FLUSH_INTERVAL = 1.0


class PendingCounts:
    """Counts kept in this process and written to Redis in one round trip at most once a second: the webhook's hot
    path pays no Redis call for its own count. What a process holds when it dies (a second's worth) is lost."""

    def __init__(self) -> None:
        self.counts: dict[Redis, Counter[tuple[str, str]]] = {}
        self.lock = threading.Lock()
        self.flusher_pid = 0

    def add(self, conn: Redis, key: str, *labels: str) -> None:
        with self.lock:
            self.counts.setdefault(conn, Counter())[(key, "|".join(labels))] += 1
            if self.flusher_pid != os.getpid():   # a forked worker starts its own
                self.flusher_pid = os.getpid()
                threading.Thread(target=self._flush_forever, daemon=True).start()

    def flush(self, conn: Redis) -> None:
        with self.lock:
            counts = self.counts.pop(conn, Counter())
        if not counts:
            return
        try:
            with conn.pipeline(transaction=False) as pipe:
                for (key, field), value in counts.items():
                    pipe.hincrby(key, field, value)
                pipe.execute()
        except RedisError:
            with self.lock:
                self.counts.setdefault(conn, Counter()).update(counts)   # kept for the next try

    def discard(self) -> None:
        with self.lock:
            self.counts.clear()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            with self.lock:
                conns = list(self.counts)
            for conn in conns:
                self.flush(conn)


PENDING = PendingCounts()


def count_soon(conn: Redis, key: str, *labels: str) -> None:
    PENDING.add(conn, key, *labels)


def record_quota(conn: Redis, forge: str, remaining: int, limit: int) -> None:
    try:
        conn.hset(QUOTA, mapping={f"{forge}|remaining": remaining, f"{forge}|limit": limit})
    except RedisError:
        pass


class CountingClient:
    """A ForgeClient that counts each operation (and records GitHub's remaining quota) for /metrics."""

    def __init__(self, client: Any, conn: Redis, forge: str) -> None:
        self._client, self._conn, self._forge = client, conn, forge

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(*args, **kwargs)
            finally:
                count(self._conn, FORGE_CALLS, self._forge, name)
                quota = getattr(self._client, "quota", lambda: None)()
                if quota:
                    record_quota(self._conn, self._forge, *quota)

        return counted


def _pairs(conn: Redis, key: str) -> Iterator[tuple[list[str], float]]:
    for field, value in conn.hgetall(key).items():
        yield field.decode().split("|"), float(value)


class BridgeCollector:
    def __init__(self, conn: Redis, settings: Settings) -> None:
        self.conn, self.settings = conn, settings

    def collect(self) -> Iterator[Any]:
        yield self._from_hash(CounterMetricFamily, "forge_bridge_deliveries", "Webhook deliveries by forge and outcome",
                              ["forge", "outcome"], DELIVERIES)
        yield from self._tasks()
        depth = GaugeMetricFamily("forge_bridge_queue_depth", "Jobs waiting per queue", labels=["queue"])
        for name, waiting in queue.queue_depths(self.conn).items():
            depth.add_metric([name], waiting)
        yield depth
        yield GaugeMetricFamily("forge_bridge_agent_slots_in_use", "Agent slots in use",
                                value=queue.slots_in_use(self.conn))
        yield GaugeMetricFamily("forge_bridge_agent_slots_limit", "max_concurrent_agents",
                                value=self.settings.max_concurrent_agents)
        yield self._from_hash(CounterMetricFamily, "forge_bridge_forge_api_calls", "Forge API operations",
                              ["forge", "operation"], FORGE_CALLS)
        yield self._from_hash(GaugeMetricFamily, "forge_bridge_forge_quota", "Forge API quota as last seen",
                              ["forge", "kind"], QUOTA)
        for key, name, what in ((AGENT_COST, "forge_bridge_agent_cost_usd", "Agents' reported cost in USD"),
                                (AGENT_TOKENS, "forge_bridge_agent_tokens", "Agents' reported tokens")):
            yield self._from_hash(CounterMetricFamily, name, what, ["forge", "repository", "preset"], key)
        yield self._from_hash(CounterMetricFamily, "forge_bridge_agent_egress_refused",
                              "Agents' connections the allowlist refused", ["host"], EGRESS_REFUSED)

    def _from_hash(self, kind: type, name: str, what: str, labels: list[str], key: str) -> Any:
        """A metric family whose samples are a Redis hash's fields (labels joined by `|`) and values."""
        family = kind(name, what, labels=labels)
        for values, value in _pairs(self.conn, key):
            family.add_metric(values, value)
        return family

    def _tasks(self) -> Iterator[Any]:
        store = Store(self.conn)
        tasks = store.tasks(store.recent_task_ids(TASK_WINDOW))
        states = Counter(task.state for task in tasks)
        by_state = GaugeMetricFamily("forge_bridge_tasks", "Recent tasks by state", labels=["state"])
        for state in TaskState:
            by_state.add_metric([state.value], states.get(state, 0))
        yield by_state
        durations = [task.duration for task in tasks if task.state.finished and task.started_at]
        buckets = [(str(edge), sum(1 for d in durations if d <= edge)) for edge in RUN_BUCKETS]
        yield HistogramMetricFamily("forge_bridge_agent_run_seconds", "How long agent runs took",
                                    buckets=[*buckets, ("+Inf", len(durations))], sum_value=sum(durations))


def render(conn: Redis, settings: Settings) -> bytes:
    registry = CollectorRegistry()
    registry.register(BridgeCollector(conn, settings))
    return generate_latest(registry)
