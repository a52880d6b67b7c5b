"""One task from slot to report: the runner takes a task whose slot came free, prepares its worktree, runs the
agent's turns (resuming its session or replaying the history), pushes, opens or updates the pull request, and
reports with one status comment and one state label; lifecycle cleans up when an issue or pull request ends.
Imports every layer below it: the shared vocabulary, store/, forges/, workspace/ and agents/."""
