"""The fanout tier: reads users' outbound streams from per-connection cursors
and publishes exact, contiguous batches to the gateways holding the sockets."""
