"""The gateway: stateless WebSocket pods that authenticate devices, append
inbound frames to the user's Redis Stream and deliver outbound events."""
