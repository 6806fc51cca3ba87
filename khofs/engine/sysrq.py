"""/proc/sysrq-trigger (drivers/tty/sysrq.c): a write handles its first character (or, after
a '_', every one), logging the key's action message at info level.

What the machine emulates of the handlers: 'b' restarts at once (emergency_restart: no
"reboot:" line), 'o' powers off ("reboot: Power down"), 'c' panics ("Kernel panic - not
syncing: sysrq triggered crash"): with a crash kernel loaded the machine boots it
(__crash_kexec), else it stops, or restarts when the command line has a non-zero panic=.
The other keys log their message and change nothing of the emulated machine (nothing of
the host either). A key without a handler logs the help line.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from khofs.engine.reboot import PR_FMT as REBOOT_PR_FMT
from khofs.engine.reboot import Reboot, Shutdown

PR_FMT = "sysrq: "
# sysrq_key_table's action messages (x86-64, Debian's 6.16 configuration)
ACTIONS = {
    **{str(n): "Changing Loglevel" for n in range(10)},
    "b": "Resetting", "c": "Trigger a crash", "e": "Terminate All Tasks",
    "f": "Manual OOM execution", "i": "Kill All Tasks", "j": "Emergency Thaw of all frozen "
    "filesystems", "k": "SAK", "l": "Show backtrace of all active CPUs", "m": "Show Memory",
    "n": "Nice All RT Tasks", "o": "Power Off", "p": "Show Regs", "q": "Show clockevent "
    "devices & pending hrtimers (no others)", "r": "Keyboard mode set to system default",
    "s": "Emergency Sync", "t": "Show State", "u": "Emergency Remount R/O",
    "v": "Restore framebuffer console", "w": "Show Blocked State", "z": "Dump ftrace buffer",
    "R": "Replay kernel logs on consoles",
}
HELP = ("HELP : loglevel(0-9) reboot(b) crash(c) terminate-all-tasks(e) "
        "memory-full-oom-kill(f) kill-all-tasks(i) thaw-filesystems(j) sak(k) "
        "show-backtrace-all-active-cpus(l) show-memory-usage(m) nice-all-RT-tasks(n) "
        "poweroff(o) show-registers(p) show-all-timers(q) unraw(r) sync(s) "
        "show-task-states(t) unmount(u) force-fb(v) show-blocked-tasks(w) "
        "dump-ftrace-buffer(z) replay-kernel-logs(R) ")
PANIC = "Kernel panic - not syncing: sysrq triggered crash"


@dataclass(frozen=True)
class SysrqLine:
    level: str
    text: str


def _panic_timeout(cmdline: str) -> int:
    """panic=N from the command line (the last one), 0 when absent or malformed."""
    value = 0
    for word in cmdline.partition("\0")[0].split():
        if word.startswith("panic="):
            with contextlib.suppress(ValueError):  # param_set_int refuses it: unchanged
                value = int(word[6:], 0)
    return value


def sysrq_keys(data: bytes) -> list[str]:
    """write_sysrq_trigger: the keys one write handles."""
    keys, bulk = [], False
    for byte in data:
        c = chr(byte)
        if c == "_":
            bulk = True
            continue
        keys.append(c)
        if not bulk:
            break
    return keys


def handle_sysrq(key: str, cmdline: str,
                 crash_loaded: bool) -> tuple[list[SysrqLine], Reboot | None]:
    """__handle_sysrq for one key: the lines it logs and how the boot ends, if it does. A
    crash with a crash kernel loaded is a Reboot(KEXEC) into that kernel."""
    action = ACTIONS.get(key)
    if action is None:
        return [SysrqLine("info", PR_FMT + HELP.rstrip())], None
    lines = [SysrqLine("info", PR_FMT + action)]
    if key == "b":
        return lines, Reboot(Shutdown.RESTART, "")
    if key == "o":
        return lines, Reboot(Shutdown.POWER_OFF, REBOOT_PR_FMT + "Power down")
    if key != "c":
        return lines, None
    lines.append(SysrqLine("emerg", PANIC))
    if crash_loaded:
        return lines, Reboot(Shutdown.KEXEC, "")
    timeout = _panic_timeout(cmdline)
    if timeout:
        if timeout > 0:
            lines.append(SysrqLine("emerg", f"Rebooting in {timeout} seconds.."))
        return lines, Reboot(Shutdown.RESTART, "")
    lines.append(SysrqLine("emerg", f"---[ end {PANIC} ]---"))
    return lines, Reboot(Shutdown.HALT, "")
