"""The keyring (shared/encryption.py): the first key seals, every key opens,
plain text passes, and what cannot be opened is a CannotOpen, never text."""

import pytest
from cryptography.fernet import Fernet

from switchboard.shared.encryption import PREFIX, CannotOpen, InvalidKey, Keyring, generate_key, is_sealed
from switchboard.shared.settings import FanoutSettings, GatewaySettings, SettingsError, WorkerSettings

A, B, C = generate_key(), generate_key(), generate_key()
JWT = {"JWT_SECRET": "0123456789abcdef" * 2}


def test_sealed_text_opens_and_never_holds_the_plain_text():
    ring = Keyring([A])
    text = "card 4111 1111 1111 1111, ünïcode ✓"
    sealed = ring.seal(text)
    assert sealed.startswith(PREFIX) and is_sealed(sealed)
    assert "4111" not in sealed and text.encode() not in sealed.encode()
    assert ring.open(sealed) == text
    assert ring.seal(text) != sealed  # a fresh IV each time: equal texts do not look equal
    assert ring.open(ring.seal("")) == ""


def test_rotation_the_first_key_seals_every_key_opens():
    old = Keyring([A]).seal("written with A")
    rotated = Keyring([B, A])
    assert rotated.open(old) == "written with A"
    new = rotated.seal("written after the rotation")
    assert Keyring([B]).open(new) == "written after the rotation"  # sealed with B, the first
    with pytest.raises(CannotOpen):
        Keyring([A]).open(new)
    with pytest.raises(CannotOpen):
        Keyring([B]).open(old)  # A left the list: A's data is unreadable, not shown


def test_plain_text_written_before_encryption_is_read_as_it_is():
    ring = Keyring([A])
    for plain in ("hello", "", "f1: the race was great", "f1:gAAAAA", "f1:" + "gAAAAA" + "A" * 94,
                  "gAAAAAB" + Keyring([A]).seal("x")[len(PREFIX) + 7:]):
        assert not is_sealed(plain), plain
        assert ring.open(plain) == plain
        assert Keyring().open(plain) == plain


def test_a_value_no_key_opens_is_cannot_open():
    sealed = Keyring([A]).seal("secret")
    with pytest.raises(CannotOpen, match="key"):
        Keyring([C]).open(sealed)
    with pytest.raises(CannotOpen, match="ENCRYPTION_KEYS is not set"):
        Keyring().open(sealed)  # never the ciphertext as text
    tampered = sealed[:-10] + ("A" if sealed[-10] != "A" else "B") + sealed[-9:]
    assert is_sealed(tampered)
    with pytest.raises(CannotOpen):
        Keyring([A]).open(tampered)
    not_text = Keyring([A]).seal_bytes(b"\xff\xfe")
    with pytest.raises(CannotOpen, match="not text"):
        Keyring([A]).open(not_text)


def test_without_keys_nothing_is_sealed():
    ring = Keyring()
    assert not ring.enabled and ring.seal("hello") == "hello"
    with pytest.raises(CannotOpen):
        ring.seal_bytes(b"data")
    assert Keyring([A]).enabled


def test_bytes_round_trip_with_the_same_marker():
    ring = Keyring([B, A])
    sealed = ring.seal_bytes(b'{"a": 1}\x00\xff')
    assert is_sealed(sealed) and ring.open_bytes(sealed) == b'{"a": 1}\x00\xff'
    assert Keyring([A]).open_bytes(Keyring([A]).seal_bytes(b"")) == b""


@pytest.mark.parametrize("keys, position", [
    (f"{A},not-a-key", "key 2 of 2"),
    ("short", "key 1 of 1"),
    (f"{A},{B},{A[:-2]}", "key 3 of 3"),
    (f"{A}, {Fernet.generate_key().decode()[:-1]}!", "key 2 of 2"),
], ids=["not-a-key", "short", "truncated", "bad-character"])
def test_a_bad_key_stops_the_service_naming_its_position_never_the_key(keys, position):
    for settings in (GatewaySettings, WorkerSettings):
        with pytest.raises(SettingsError, match=f"ENCRYPTION_KEYS: {position} is not a Fernet key") as raised:
            settings.from_env({**JWT, "ENCRYPTION_KEYS": keys})
        for key in keys.split(","):
            assert key.strip()[:8] not in str(raised.value)
        assert raised.value.__cause__ is None and raised.value.__suppress_context__
    with pytest.raises(InvalidKey):
        Keyring(["x"])


def test_settings_read_the_keys_in_order_and_never_print_them():
    for settings in (GatewaySettings, WorkerSettings):
        s = settings.from_env({**JWT, "ENCRYPTION_KEYS": f" {B} , {A} "})
        assert s.encryption.size == 2 and s.encryption.open(Keyring([A]).seal("old")) == "old"
        assert Keyring([B]).open(s.encryption.seal("new")) == "new"
        assert A not in repr(s) and B not in repr(s) and "Keyring(2 keys)" in repr(s)
        assert not settings.from_env({**JWT, "ENCRYPTION_KEYS": " "}).encryption.enabled
        assert not settings.from_env(JWT).encryption.enabled
    assert not hasattr(FanoutSettings(), "encryption")  # the fanout forwards sealed fields, keyless


def test_switchboard_keygen_prints_a_new_key(capsys):
    from switchboard.cli import main

    assert main(["keygen"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["keygen"]) == 0
    second = capsys.readouterr().out.strip()
    assert first != second and Keyring([first, second]).size == 2
    assert Keyring([second, first]).open(Keyring([first]).seal("x")) == "x"
