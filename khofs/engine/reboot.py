"""reboot(2) (kernel/reboot.c, 6.16): who may, the magic numbers, then the command.

The capability is CAP_SYS_BOOT in the user namespace that owns the caller's pid namespace
(EPERM); the magics are compared as ints (EINVAL); a caller in a pid namespace below the
machine's gets reboot_pid_ns (kernel/pid_namespace.c): RESTART and RESTART2 end that namespace
as if by SIGHUP, HALT and POWER_OFF as if by SIGINT, every other command is EINVAL. Then the
commands: CAD_ON and CAD_OFF return 0; KEXEC boots the loaded image (EINVAL when there is
none); RESTART, RESTART2 (whose argument is copied first: EFAULT), HALT and POWER_OFF end the
machine's run. Anything else, SW_SUSPEND included (no hibernation here), is EINVAL.
"""

from __future__ import annotations

import enum
import errno
import signal
from dataclasses import dataclass

from khofs.engine.uaccess import CAP_SYS_BOOT, UserAccess

# include/uapi/linux/reboot.h
LINUX_REBOOT_MAGIC1 = 0xFEE1DEAD
LINUX_REBOOT_MAGIC2 = 672274793
LINUX_REBOOT_MAGIC2A = 85072278
LINUX_REBOOT_MAGIC2B = 369367448
LINUX_REBOOT_MAGIC2C = 537993216
LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_HALT = 0xCDEF0123
LINUX_REBOOT_CMD_CAD_ON = 0x89ABCDEF
LINUX_REBOOT_CMD_CAD_OFF = 0x00000000
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
LINUX_REBOOT_CMD_RESTART2 = 0xA1B2C3D4
LINUX_REBOOT_CMD_SW_SUSPEND = 0xD000FCE2
LINUX_REBOOT_CMD_KEXEC = 0x45584543
MAGIC2S = (LINUX_REBOOT_MAGIC2, LINUX_REBOOT_MAGIC2A, LINUX_REBOOT_MAGIC2B,
           LINUX_REBOOT_MAGIC2C)
RESTART2_ARG_MAX = 255  # char buffer[256], the last byte a NUL
PR_FMT = "reboot: "


class Shutdown(enum.Enum):
    """How a boot of the machine ends."""

    KEXEC = "kexec"
    RESTART = "restart"
    HALT = "halt"
    POWER_OFF = "power-off"


@dataclass(frozen=True)
class Reboot:
    """A reboot(2) that does not return: the machine goes down (`how`), logging `message`."""

    how: Shutdown
    message: str


@dataclass(frozen=True)
class PidNsReboot:
    """reboot_pid_ns: the caller's pid namespace ends, its init killed as if by `signal`."""

    signal: int


def _u32(value: int) -> int:
    return value & 0xFFFFFFFF


def sys_reboot(user: UserAccess, magic1: int, magic2: int, cmd: int, arg: int,
               kexec_loaded: bool) -> int | Reboot | PidNsReboot:
    """SYSCALL_DEFINE4(reboot): 0 or a negative errno when it returns, else what ends."""
    if not user.pid_ns_capable(CAP_SYS_BOOT):
        return -errno.EPERM
    magic1, magic2, cmd = _u32(magic1), _u32(magic2), _u32(cmd)
    if magic1 != LINUX_REBOOT_MAGIC1 or magic2 not in MAGIC2S:
        return -errno.EINVAL
    if not user.in_init_pid_ns():
        return _reboot_pid_ns(cmd)
    if cmd in (LINUX_REBOOT_CMD_CAD_ON, LINUX_REBOOT_CMD_CAD_OFF):
        return 0
    if cmd == LINUX_REBOOT_CMD_KEXEC:
        # kernel_kexec: machine_shutdown, then machine_kexec's "Starting new kernel"
        return Reboot(Shutdown.KEXEC, "kexec_core: Starting new kernel") if kexec_loaded \
            else -errno.EINVAL
    if cmd == LINUX_REBOOT_CMD_RESTART:
        return Reboot(Shutdown.RESTART, PR_FMT + "Restarting system")
    if cmd == LINUX_REBOOT_CMD_RESTART2:
        raw = user.strncpy_from_user(arg, RESTART2_ARG_MAX)
        if raw is None:
            return -errno.EFAULT
        command = raw.decode("utf-8", "surrogateescape")
        return Reboot(Shutdown.RESTART, f"{PR_FMT}Restarting system with command '{command}'")
    if cmd == LINUX_REBOOT_CMD_HALT:
        return Reboot(Shutdown.HALT, PR_FMT + "System halted")
    if cmd == LINUX_REBOOT_CMD_POWER_OFF:
        return Reboot(Shutdown.POWER_OFF, PR_FMT + "Power down")
    return -errno.EINVAL


def _reboot_pid_ns(cmd: int) -> int | PidNsReboot:
    if cmd in (LINUX_REBOOT_CMD_RESTART, LINUX_REBOOT_CMD_RESTART2):
        return PidNsReboot(signal.SIGHUP)
    if cmd in (LINUX_REBOOT_CMD_POWER_OFF, LINUX_REBOOT_CMD_HALT):
        return PidNsReboot(signal.SIGINT)
    return -errno.EINVAL
