from switchboard.gateway.resume import StreamState, parse_offset, resolve

STATE = StreamState(epoch="E", trimmed="100-0", last_id="500-0", window_start="400-0")
FRESH = StreamState(epoch="E", trimmed="0-0", last_id="50-0", window_start="0-0")
EMPTY = StreamState(epoch="E", trimmed="0-0", last_id="0-0", window_start="0-0")


def test_last_id_within_retention_resumes_exactly():
    r = resolve(STATE, last_id="300-0", epoch="E", stored=None)
    assert (r.resume_from, r.recovered) == ("300-0", True)


def test_last_id_equal_to_newest_is_recovered_with_nothing_to_replay():
    r = resolve(STATE, last_id="500-0", epoch="E", stored=None)
    assert (r.resume_from, r.recovered) == ("500-0", True)


def test_last_id_equal_to_newest_trimmed_is_still_exact():
    r = resolve(STATE, last_id="100-0", epoch="E", stored=None)
    assert (r.resume_from, r.recovered) == ("100-0", True)


def test_last_id_older_than_retention_is_not_recovered():
    r = resolve(STATE, last_id="99-9", epoch="E", stored=None)
    assert (r.resume_from, r.recovered) == ("100-0", False)


def test_last_id_from_the_future_is_not_recovered():
    r = resolve(STATE, last_id="900-0", epoch="E", stored=None)
    assert (r.resume_from, r.recovered) == ("500-0", False)


def test_wrong_or_missing_epoch_is_not_recovered():
    for epoch in ("OLD", None):
        r = resolve(STATE, last_id="300-0", epoch=epoch, stored=None)
        assert r.recovered is False and r.resume_from == "400-0"


def test_stored_offset_is_used_without_last_id():
    r = resolve(STATE, last_id=None, epoch=None, stored=("E", "450-0"))
    assert (r.resume_from, r.recovered, r.source) == ("450-0", True, "offset")
    r = resolve(STATE, last_id=None, epoch=None, stored=("OLD", "450-0"))
    assert (r.resume_from, r.recovered) == ("400-0", False)


def test_last_id_wins_over_the_stored_offset():
    r = resolve(STATE, last_id="420-0", epoch="E", stored=("E", "450-0"))
    assert r.resume_from == "420-0"


def test_new_device_replays_the_window_and_is_recovered_only_if_that_is_everything():
    r = resolve(STATE, last_id=None, epoch=None, stored=None)
    assert (r.resume_from, r.recovered) == ("400-0", False)
    r = resolve(FRESH, last_id=None, epoch=None, stored=None)
    assert (r.resume_from, r.recovered) == ("0-0", True)
    r = resolve(EMPTY, last_id=None, epoch="E", stored=None)
    assert (r.resume_from, r.recovered) == ("0-0", True)


def test_offsets_round_trip_and_reject_garbage():
    assert parse_offset("E|5-1") == ("E", "5-1")  # as the store_offset script writes it
    for raw in (None, "", "E", "E|x", "|"):
        assert parse_offset(raw) is None
