"""An object server's task slots, shared fairly between accounts.

A server runs at most ``slots`` tasks at once.  When tasks of several
accounts wait, a freed slot goes to the account that runs the fewest tasks
here (the one that has waited longest among equals), so two tenants that
submit large jobs at the same moment each hold half the slots while both
wait, whatever the number of jobs or groups each sent: a tenant with eight
jobs does not get eight shares.  Within one account tasks keep their order.

Admission follows the same rule: a server accepts ``slots + queue`` task
groups before it answers 503, and beyond that still accepts a group of an
account that holds less than its share of that room, up to twice the room,
so one tenant's backlog cannot keep another's groups out.
"""

from __future__ import annotations

import collections

from eventlet.event import Event


class FairSlots:
    """``size`` slots; :meth:`acquire` waits for one, on behalf of ``account``."""

    def __init__(self, size: int):
        self.size = size
        self.free = size
        self.running: collections.Counter[str] = collections.Counter()
        # Accounts in the order they began to wait, each with its waiters in order.
        self.waiting: dict[str, collections.deque[Event]] = {}

    def acquire(self, account: str) -> None:
        if self.free and not self.waiting:
            self._take(account)
            return
        granted = Event()
        self.waiting.setdefault(account, collections.deque()).append(granted)
        try:
            granted.wait()
        except BaseException:
            if granted.ready():  # given the slot as it was killed: pass it on
                self.release(account)
            else:
                self._forget(account, granted)
            raise

    def release(self, account: str) -> None:
        self.running[account] -= 1
        if self.running[account] <= 0:
            del self.running[account]
        self.free += 1
        self._grant()

    def _take(self, account: str) -> None:
        self.free -= 1
        self.running[account] += 1

    def _grant(self) -> None:
        while self.free and self.waiting:
            account = min(self.waiting, key=lambda a: self.running[a])
            queue = self.waiting[account]
            granted = queue.popleft()
            if not queue:
                del self.waiting[account]
            self._take(account)
            granted.send()

    def _forget(self, account: str, granted: Event) -> None:
        queue = self.waiting.get(account)
        if queue is not None and granted in queue:
            queue.remove(granted)
            if not queue:
                del self.waiting[account]


class FairAdmission:
    """How many task groups a server holds, per account, and whether one more fits."""

    def __init__(self, room: int):
        self.room = room
        self.held: collections.Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.held.values())

    def admits(self, account: str) -> bool:
        """Whether a group of ``account`` may be held now: always within ``room``;
        beyond it (up to twice), only while the account holds less than its share."""
        total = self.total
        if total < self.room:
            return True
        if total >= 2 * self.room:
            return False
        accounts = len(self.held) + (account not in self.held)
        return self.held[account] < self.room // accounts

    def enter(self, account: str) -> None:
        self.held[account] += 1

    def leave(self, account: str) -> None:
        self.held[account] -= 1
        if self.held[account] <= 0:
            del self.held[account]

    def __repr__(self) -> str:  # pragma: no cover - for a debugger
        return f"FairAdmission(room={self.room}, held={dict(self.held)})"
