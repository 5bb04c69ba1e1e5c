"""The gateway with ENCRYPTION_KEYS: what the accept script stores is sealed,
the byte quota counts the plain text, and a delivery's events are opened
once for all its connections, an event no key opens becoming an
``unreadable`` error in its place."""

import uuid

import msgspec
import pytest
import redis.asyncio as aioredis

from switchboard.gateway.hub import OpenedEvents
from switchboard.gateway.store import GatewayStore, OverLimit
from switchboard.shared import keys
from switchboard.shared.encryption import Keyring, generate_key, is_sealed
from switchboard.shared.protocol import Error, ErrorCode, Event, decode_server_frame
from switchboard.shared.settings import QuotaSettings, StreamSettings

A, B = generate_key(), generate_key()


class CountingKeyring(Keyring):
    def __init__(self, keys_):
        super().__init__(keys_)
        self.opened = 0

    def open(self, text: str) -> str:
        self.opened += 1
        return super().open(text)


@pytest.fixture
async def client(redis_url):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def test_the_inbound_entry_and_the_user_event_are_stored_sealed(client):
    ring = Keyring([A])
    store, user = GatewayStore(client, StreamSettings(), keyring=ring), f"u-{uuid.uuid4().hex[:8]}"
    accepted = await store.accept(user, "phone", "c", "m1", "card 4111 1111 1111 1111")
    [(entry_id, entry)] = await client.xrange(keys.inbound(user, "c"))
    [(_, event)] = await client.xrange(keys.outbound(user))
    assert entry_id == accepted.id and event["kind"] == "user" and event["in"] == accepted.id
    for stored in (entry["text"], event["text"]):
        assert is_sealed(stored) and "4111" not in stored
        assert ring.open(stored) == "card 4111 1111 1111 1111"
    assert (entry["cmid"], entry["dev"], event["cmid"], event["dev"]) == ("m1", "phone", "m1", "phone")
    # Without keys the text is stored as it is.
    plain = GatewayStore(client, StreamSettings())
    await plain.accept(user, "phone", "d", "m2", "as it is")
    assert (await client.xrange(keys.inbound(user, "d")))[0][1]["text"] == "as it is"


async def test_the_byte_quota_counts_the_plain_text_not_its_ciphertext(client):
    quotas = QuotaSettings(**{**vars(QuotaSettings.unlimited()), "send_bytes_per_minute": 1_000})
    store = GatewayStore(client, StreamSettings(), quotas, Keyring([A]))
    user = f"u-{uuid.uuid4().hex[:8]}"
    text = "é" * 500  # 1,000 bytes of UTF-8: a minute's allowance; sealed, about 1,450
    await store.accept(user, "d", "c", "m1", text)
    assert len((await client.xrange(keys.inbound(user, "c")))[0][1]["text"]) > 1_000
    with pytest.raises(OverLimit) as refused:
        await store.accept(user, "d", "c", "m2", "x")  # the allowance is spent, by the plain bytes
    assert refused.value.code == "rate_limited" and refused.value.retry_after_ms > 0
    other = f"u-{uuid.uuid4().hex[:8]}"
    with pytest.raises(OverLimit) as too_large:
        await store.accept(other, "d", "c", "m1", "é" * 501)  # 1,002 bytes: never within a minute's
    assert too_large.value.retry_after_ms == 0


def _frames(events: OpenedEvents) -> list:
    return [decode_server_frame(frame) for frame in events.frames]


def test_a_deliverys_events_are_opened_once_for_all_its_connections():
    ring = CountingKeyring([B, A])
    batch = [Event(id="1-0", conversation_id="c", kind="user", text=Keyring([A]).seal("sealed with A"),
                   client_msg_id="m1", device_id="phone", ts=5),
             Event(id="2-0", conversation_id="c", kind="delta", text=Keyring([B]).seal("a delta"), seq=0),
             Event(id="3-0", conversation_id="c", kind="assistant", text="written before encryption")]
    events = OpenedEvents(batch, ring)
    assert ring.opened == 0  # nothing until a connection takes the events
    frames = _frames(events)
    assert [f.text for f in frames] == ["sealed with A", "a delta", "written before encryption"]
    assert frames[0] == msgspec.structs.replace(batch[0], text="sealed with A")  # every other field as stored
    assert frames[1].seq == 0
    for _ in range(5):  # more connections of the user on this gateway
        assert events.frames is events.frames
    assert ring.opened == 3 and events.ids == ["1-0", "2-0", "3-0"]


@pytest.mark.parametrize("keyring", [Keyring([B]), Keyring()], ids=["another key", "no keys"])
def test_an_event_no_key_opens_becomes_an_unreadable_error_in_its_place(keyring):
    batch = [Event(id="1-0", conversation_id="c", kind="user", text=Keyring([A]).seal("card 4111"),
                   client_msg_id="m1"),
             Event(id="2-0", conversation_id="c", kind="assistant", text="plain")]
    events = OpenedEvents(batch, keyring)
    error, after = _frames(events)
    assert isinstance(error, Error) and error.code is ErrorCode.UNREADABLE and error.client_msg_id == "m1"
    assert "1-0" in error.message and "4111" not in error.message and "gAAAA" not in events.frames[0].decode()
    assert after.text == "plain"
    assert events.ids == ["1-0", "2-0"]  # the cursor moves past it
