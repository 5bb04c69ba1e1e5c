"""Code shared by every Switchboard service: wire protocol, Redis keys, settings.

Nothing in this package imports a service; the wire-protocol module imports
neither redis nor websockets.
"""
