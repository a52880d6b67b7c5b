"""From a forge event to a decision: webhooks/ parses deliveries without I/O, admission records each one exactly
once and hands it to the event queue, triggers and commands decide what a label or comment means, the poller
finds what webhooks missed, and handler carries out a decision in an event job (authorize, acknowledge, queue
the task, answer). Imports every layer below it: the shared vocabulary, store/, forges/, workspace/, agents/
and work/."""
