"""`python -m forge_bridge`: the same as the `forge-bridge` command."""
import sys

from forge_bridge.service.cli import main

sys.exit(main())
