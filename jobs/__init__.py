"""RQ entry points, enqueued by dotted path (`jobs.tasks.*`) with plain string arguments."""
