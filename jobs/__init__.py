"""RQ entry points, enqueued by dotted path (`jobs.tasks.*`) with plain string arguments. Those names stay as they
are across versions, so jobs queued before an upgrade still run after it. Outside the package and above web/:
it imports intake/ and work/ (and what they use); only service/ (the worker's start) imports it."""
