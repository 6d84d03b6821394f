"""aoe: the Agent Orchestration Engine."""

__version__ = "0.1.0"
