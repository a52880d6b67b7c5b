"""The processes a user starts and the commands they type: `forge-bridge` itself (cli), serve's process tree
(supervisor), `check`, `hooks install|list`. The top layer: it may import every other, and the RQ entry points
in jobs/."""
