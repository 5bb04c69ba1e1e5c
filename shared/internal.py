"""Messages between gateways and fanouts (Redis pub/sub, msgpack-encoded).

A gateway *attaches* each of its connections to one live fanout with the
cursor it has delivered up to; the fanout sends back *deliveries*: batches of
events that continue exactly at ``prev``. The gateway accepts a batch only if
``prev`` equals what it last delivered, so a lost or repeated message is
detected and repaired by re-attaching, never shown to a user as a gap or a
duplicate.
"""

from __future__ import annotations

from typing import Union

import msgspec

from .protocol import Event


class Control(msgspec.Struct, tag_field="op", array_like=True):
    pass


class Attach(Control, tag="attach"):
    gateway: str
    conn: str
    user: str
    cursor: str  #: deliver events with ids greater than this


class Detach(Control, tag="detach"):
    conn: str
    user: str


ControlMessage = Union[Attach, Detach]


class Target(msgspec.Struct, array_like=True):
    """One connection a :class:`Delivery` is for."""

    conn: str
    prev: str  #: the cursor this connection's part of the batch continues from
    #: True when events after ``prev`` were trimmed before they could be
    #: delivered: the connection cannot continue exactly and must resync.
    lost: bool = False


class Delivery(msgspec.Struct, array_like=True):
    """One read of a user's outbound stream, for all of that user's
    connections on one gateway.

    ``events`` holds every event after the smallest ``prev`` of the targets
    that are not lost, so each target finds in it every event after its own
    ``prev``. The events travel once per gateway, not once per connection, and
    the gateway encodes each one once for all the connections it goes to.
    """

    targets: list[Target]
    events: list[Event]


_control_decoder = msgspec.msgpack.Decoder(ControlMessage)
_delivery_decoder = msgspec.msgpack.Decoder(Delivery)
_encoder = msgspec.msgpack.Encoder()


def encode(message: Control | Delivery) -> bytes:
    return _encoder.encode(message)


def decode_control(data: bytes) -> ControlMessage:
    return _control_decoder.decode(data)


def decode_delivery(data: bytes) -> Delivery:
    return _delivery_decoder.decode(data)
