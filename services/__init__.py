"""Switchboard: LangGraph conversations over WebSockets on Redis Streams."""

__version__ = "0.1.0"
