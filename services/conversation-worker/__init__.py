"""Conversation workers: a consumer group that runs LangGraph turns, one
conversation at a time in inbound order, many conversations concurrently."""
