"""forge-bridge: a git forge as the user interface of a fleet of AI coding agents."""
__version__ = "0.1.0"
