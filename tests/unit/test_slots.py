"""An object server's slots and room for groups, shared fairly between accounts."""

import eventlet

from zerocompute.middleware.slots import FairAdmission, FairSlots


def waiters(slots: FairSlots, accounts: list[str], granted: list[str]):
    """One green thread per entry of ``accounts``, each waiting for a slot, in order."""
    threads = []
    for n, account in enumerate(accounts):
        def wait(account=account, n=n):
            slots.acquire(account)
            granted.append(f"{account}{n}")
        threads.append(eventlet.spawn(wait))
        eventlet.sleep(0)  # queued in this order
    return threads


def test_a_freed_slot_goes_to_the_account_running_fewest_whatever_its_backlog():
    slots, granted = FairSlots(2), []
    slots.acquire("A")
    slots.acquire("A")  # A's first two tasks hold both slots
    waiters(slots, ["A"] * 6 + ["B"] * 3, granted)
    for holder in ["A", "A", "B", "A"]:  # A's first two end, then each one granted
        slots.release(holder)
        eventlet.sleep(0)
    # B, queued behind six of A's, runs as soon as a slot frees; then they alternate.
    assert granted == ["B6", "A0", "B7", "A1"]
    assert slots.running == {"A": 1, "B": 1}


def test_one_accounts_tasks_keep_their_order():
    slots, granted = FairSlots(1), []
    slots.acquire("A")
    waiters(slots, ["A"] * 4, granted)
    for _ in range(4):
        slots.release("A")
        eventlet.sleep(0)
    assert granted == ["A0", "A1", "A2", "A3"]


def test_a_waiter_killed_while_it_waits_takes_no_slot():
    slots, granted = FairSlots(1), []
    slots.acquire("A")
    (doomed, _) = waiters(slots, ["B", "C"], granted)
    doomed.kill()
    slots.release("A")
    eventlet.sleep(0)
    assert granted == ["C1"]
    slots.release("C")
    assert (slots.free, slots.running, slots.waiting) == (1, {}, {})


def test_a_lone_account_uses_every_slot():
    slots = FairSlots(3)
    for _ in range(3):
        slots.acquire("A")
    assert slots.free == 0 and slots.running == {"A": 3}


def test_one_accounts_backlog_does_not_keep_anothers_groups_out():
    room = FairAdmission(4)
    for _ in range(4):
        assert room.admits("A")
        room.enter("A")
    assert not room.admits("A")  # full, and A holds all it may
    for _ in range(2):  # B holds less than its share (4 // 2): still admitted
        assert room.admits("B")
        room.enter("B")
    assert not room.admits("B")
    assert room.admits("C")  # three accounts: a share is one group, and C holds none
    room.enter("C")
    assert not room.admits("C")
    assert room.admits("D")
    room.enter("D")
    assert room.total == 8 and not room.admits("E")  # twice the room: nobody more
    for account in "AAAAB":
        room.leave(account)
    assert room.admits("E") and room.total == 3


def test_the_room_never_holds_more_than_twice_its_size():
    room = FairAdmission(2)
    for account in "ABCD":
        if room.admits(account):
            room.enter(account)
    assert room.total <= 4
    room = FairAdmission(4)
    for account in ["A"] * 4 + list("BCDEFGHIJ"):
        if room.admits(account):
            room.enter(account)
    assert room.total <= 8
