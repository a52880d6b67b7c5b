"""Where the bridge keeps what outlives a process: Redis (the queues and agent slots, per-issue lines, tasks and
sessions, metrics counted by every process) and the embedded Redis-compatible server that `serve` runs when no
redis_url is set. Imports only the shared vocabulary at the package's top (models, refs, config, redact, logs)."""
