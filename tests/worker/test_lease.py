"""The lease state machine, alone: no Redis, no clock."""

import asyncio

import pytest

from switchboard.worker.lease import Lease, LeaseLostError, LeaseState, Tokens


def test_a_commit_that_finds_more_keeps_the_lease_and_one_that_finds_none_releases_it():
    lease = Lease("k", "t")
    lease.commit_sent()
    assert lease.state is LeaseState.COMMITTING and lease.must_release
    lease.commit_answered(released=False)
    assert lease.state is LeaseState.HOLDING
    lease.commit_sent()
    lease.commit_answered(released=True)
    assert lease.state is LeaseState.RELEASED and not lease.must_release


def test_a_refused_renewal_is_a_lost_lease_only_while_no_commit_is_in_flight():
    holding = Lease("k", "t")
    assert holding.renewal_refused() is True
    assert holding.state is LeaseState.LOST and not holding.must_release

    committing = Lease("k", "t")
    committing.commit_sent()
    assert committing.renewal_refused() is False  # the commit may have released it: its answer decides
    assert committing.state is LeaseState.COMMITTING
    committing.commit_answered(released=True)
    assert committing.state is LeaseState.RELEASED


def test_no_commit_is_sent_on_a_lost_or_released_lease():
    lease = Lease("k", "t")
    lease.lose()
    with pytest.raises(LeaseLostError):
        lease.commit_sent()
    released = Lease("k", "t")
    released.commit_sent()
    released.commit_answered(released=True)
    with pytest.raises(LeaseLostError):
        released.commit_sent()


def test_an_unanswered_commit_leaves_the_lease_to_release():
    lease = Lease("k", "t")
    lease.commit_sent()
    lease.commit_unanswered()
    assert lease.state is LeaseState.HOLDING and lease.must_release


async def test_settled_waits_for_the_commit_in_flight():
    lease = Lease("k", "t")
    await asyncio.wait_for(lease.settled(), 1)  # nothing in flight
    lease.commit_sent()
    waiter = asyncio.create_task(lease.settled())
    await asyncio.sleep(0)
    assert not waiter.done()
    lease.commit_answered(released=False)
    await asyncio.wait_for(waiter, 1)


def test_a_process_recognises_only_its_own_idle_tokens():
    mine, theirs = Tokens(), Tokens()
    left_behind, running = mine.new(), mine.new()
    mine.active.add(running)
    assert mine.is_orphan(left_behind)
    assert not mine.is_orphan(running)  # a drain of this process uses it
    assert not mine.is_orphan(theirs.new())  # another process's
