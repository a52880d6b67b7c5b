"""The data_dir on disk: each repository's mirror, each issue's worktree and its own git repository beside it,
spares made ahead of need, logs and agent homes. The bridge's own git runs here and never runs what an agent
configured. Imports the shared vocabulary and store/."""
