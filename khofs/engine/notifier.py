"""Blocking notifier chains: include/linux/notifier.h and kernel/notifier.c."""

from __future__ import annotations

import errno
import threading
from typing import Protocol

NOTIFY_DONE = 0x0000
NOTIFY_OK = 0x0001
NOTIFY_STOP_MASK = 0x8000
NOTIFY_BAD = NOTIFY_STOP_MASK | 0x0002
NOTIFY_STOP = NOTIFY_OK | NOTIFY_STOP_MASK


def notifier_from_errno(err: int) -> int:
    """Encode a negative errno as a chain-stopping return value (0 means NOTIFY_OK)."""
    if err:
        return NOTIFY_STOP_MASK | (NOTIFY_OK - err)
    return NOTIFY_OK


def notifier_to_errno(ret: int) -> int:
    """Decode a chain result; a bare NOTIFY_BAD becomes -EPERM."""
    ret &= ~NOTIFY_STOP_MASK
    return NOTIFY_OK - ret if ret > NOTIFY_OK else 0


class NotifierBlock(Protocol):
    """struct notifier_block: a callback and its priority."""

    priority: int

    def notifier_call(self, action: int, data: object) -> int: ...


class BlockingNotifierHead:
    """struct blocking_notifier_head: callbacks run in priority order, registration order
    among equals, under an rwsem (here a lock) so registration never races a call."""

    def __init__(self) -> None:
        self._chain: list[NotifierBlock] = []
        self._rwsem = threading.RLock()

    def register(self, nb: NotifierBlock) -> int:
        """notifier_chain_register: insert before the first block of lower priority."""
        with self._rwsem:
            if any(b is nb for b in self._chain):
                return -errno.EEXIST
            pos = len(self._chain)
            for i, b in enumerate(self._chain):
                if nb.priority > b.priority:
                    pos = i
                    break
            self._chain.insert(pos, nb)
            return 0

    def unregister(self, nb: NotifierBlock) -> int:
        with self._rwsem:
            for i, b in enumerate(self._chain):
                if b is nb:
                    del self._chain[i]
                    return 0
            return -errno.ENOENT

    def call_chain(self, action: int, data: object) -> int:
        """notifier_call_chain: the last result; stop at the first with NOTIFY_STOP_MASK."""
        ret = NOTIFY_DONE
        with self._rwsem:
            for nb in list(self._chain):
                ret = nb.notifier_call(action, data)
                if ret & NOTIFY_STOP_MASK:
                    break
        return ret
