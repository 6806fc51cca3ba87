"""syslog(2) (kernel/printk/printk.c do_syslog): the log buffer as klogctl sees it, for
`dmesg -S`, `dmesg -c`/`-C` (clear), `dmesg -n` (console level) and klogd-style readers.

Every action needs CAP_SYSLOG (Debian's dmesg_restrict=1), then: CLOSE and OPEN do nothing;
READ takes unread records from syslog_seq (waiting for one when there is none); READ_ALL
copies the newest records since the last clear that fit the buffer, READ_CLEAR also clears;
CLEAR moves clear_seq to the end; CONSOLE_OFF, CONSOLE_ON and CONSOLE_LEVEL (1 to 8) set the
console's level; SIZE_UNREAD and SIZE_BUFFER give sizes. Lines are "<PRI>[seconds] text".
"""

from __future__ import annotations

import errno

from khofs.engine.printk import LEVELS, LOG_BUF_LEN, Printk, Record, console_loglevel
from khofs.engine.uaccess import CAP_SYSLOG, UserAccess

SYSLOG_ACTION_CLOSE, SYSLOG_ACTION_OPEN, SYSLOG_ACTION_READ = 0, 1, 2
SYSLOG_ACTION_READ_ALL, SYSLOG_ACTION_READ_CLEAR, SYSLOG_ACTION_CLEAR = 3, 4, 5
SYSLOG_ACTION_CONSOLE_OFF, SYSLOG_ACTION_CONSOLE_ON, SYSLOG_ACTION_CONSOLE_LEVEL = 6, 7, 8
SYSLOG_ACTION_SIZE_UNREAD, SYSLOG_ACTION_SIZE_BUFFER = 9, 10
MINIMUM_CONSOLE_LOGLEVEL = 1
WAIT = object()  # READ with nothing unread: the caller waits for the next record


def syslog_text(rec: Record) -> bytes:
    """record_print_text with the syslog prefix and the time, every line of the text."""
    prefix = f"<{rec.facility << 3 | LEVELS.index(rec.level)}>[{rec.seconds:12.6f}] "
    lines = rec.text.split("\n")
    return "".join(prefix + line + "\n" for line in lines).encode("utf-8", "surrogateescape")


def console_level(log: Printk, cmdline: str) -> int:
    return log.console_level if log.console_level is not None else console_loglevel(cmdline)


def do_syslog(log: Printk, cmdline: str, user: UserAccess, action: int, buf: int,
              length: int) -> int | object:
    """The return value (a count or a negative errno), or WAIT."""
    if not user.capable(CAP_SYSLOG):
        return -errno.EPERM
    if action in (SYSLOG_ACTION_CLOSE, SYSLOG_ACTION_OPEN):
        return 0
    if action in (SYSLOG_ACTION_READ, SYSLOG_ACTION_READ_ALL, SYSLOG_ACTION_READ_CLEAR):
        if not buf or length < 0:
            return -errno.EINVAL
        if not length:
            return 0
        if action == SYSLOG_ACTION_READ:
            return _read(log, user, buf, length)
        return _read_all(log, user, buf, length, action == SYSLOG_ACTION_READ_CLEAR)
    if action == SYSLOG_ACTION_CLEAR:
        log.clear_seq = len(log.records)
        return 0
    if action == SYSLOG_ACTION_CONSOLE_OFF:
        log.console_level = MINIMUM_CONSOLE_LOGLEVEL
        return 0
    if action == SYSLOG_ACTION_CONSOLE_ON:
        log.console_level = None
        return 0
    if action == SYSLOG_ACTION_CONSOLE_LEVEL:
        if not 1 <= length <= 8:
            return -errno.EINVAL
        log.console_level = max(length, MINIMUM_CONSOLE_LOGLEVEL)
        return 0
    if action == SYSLOG_ACTION_SIZE_UNREAD:
        unread = sum(len(syslog_text(r)) for r in log.records[log.syslog_seq:])
        return unread - log.syslog_partial
    if action == SYSLOG_ACTION_SIZE_BUFFER:
        return LOG_BUF_LEN
    return -errno.EINVAL


def _read(log: Printk, user: UserAccess, buf: int, length: int) -> int | object:
    out = syslog_read(log, length)
    if out is None:
        return WAIT
    return len(out) if user.copy_to_user(buf, out) else -errno.EFAULT


def syslog_read(log: Printk, length: int) -> bytes | None:
    """syslog_print (also /proc/kmsg's read): unread records from syslog_seq, whole while
    they fit, one that does not in parts; None when nothing is unread."""
    if log.syslog_seq >= len(log.records):
        return None
    out = b""
    while log.syslog_seq < len(log.records) and len(out) < length:
        text = syslog_text(log.records[log.syslog_seq])[log.syslog_partial:]
        room = length - len(out)
        if len(text) > room:
            if out:
                break
            out, log.syslog_partial = text[:room], log.syslog_partial + room
            break
        out += text
        log.syslog_seq += 1
        log.syslog_partial = 0
    return out


def _read_all(log: Printk, user: UserAccess, buf: int, length: int, clear: bool) -> int:
    """syslog_print_all: from the first record since clear_seq from which all the rest fit."""
    texts = [syslog_text(r) for r in log.records[log.clear_seq:]]
    while texts and sum(map(len, texts)) > length:
        texts.pop(0)
    out = b"".join(texts)
    if out and not user.copy_to_user(buf, out):
        return -errno.EFAULT
    if clear:
        log.clear_seq = len(log.records)
    return len(out)
