"""`khofs run`: COMMAND as the userspace of an emulated machine, PID 1 of namespaces of its
own, seeing the machine's files; its boots, its end, and bad input."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.machine_helpers import (
    KHOFS,
    Scratch,
    build,
    bzimage,
    khofs_run,
    newc,
    scratch,
)

pytestmark = pytest.mark.mount

EXAMPLES = Path(__file__).parent.parent / "examples" / "scripts"
DTS = '/dts-v1/;\n/ {\n\tcompatible = "mydrv-v1";\n\tstate = <42>;\n};\n'


@pytest.fixture
def sc() -> Iterator[Scratch]:
    with scratch() as made:
        yield made


MACHINE = """cat <<END
pid=$$
hostname: $(hostname)
init: $(ps -o comm= -p 1)
processes: $(ps -e -o pid= | wc -l)
links: $(ip -o link | cut -d' ' -f2 | tr '\\n' ' ')
cmdline: $(cat /proc/cmdline)
kexec: $(cd /sys/kernel && cat kexec_loaded kexec_crash_loaded kexec_crash_size | paste -sd' ')
memmap: $(ls /sys/firmware/memmap | tr '\\n' ' ')
memmap/2: $(cd /sys/firmware/memmap/2 && cat start end type | paste -sd' ')
debugfs: $(ls /sys/kernel/debug/kho/out | tr '\\n' ' ')
END
"""


def test_command_is_pid_1_of_a_machine_of_its_own(sc: Scratch, user: list[str] | None) -> None:
    r = khofs_run("--cmdline", "kho=on crashkernel=256M", "--", "sh", "-c", MACHINE,
                  sc=sc, user=user)
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert lines[0] == "pid=1"
    assert lines[1] == "hostname: (none)"
    assert lines[2] == "init: sh"
    assert int(lines[3].split()[1]) < 10  # the run's only: sh and this line's pipeline
    assert lines[4:] == [
        "links: lo: ",
        "cmdline: kho=on crashkernel=256M",
        "kexec: 0 0 268435456",
        "memmap: 0 1 2 3 ",
        "memmap/2: 0x100000 0x7fffffff System RAM",
        "debugfs: finalize scratch_len scratch_phys sub_fdts ",
    ]
    sc.nothing_left()


def test_proc_cmdline_as_the_kernel_shows_it(sc: Scratch) -> None:
    r = khofs_run("--cmdline", "kho=on console=ttyS0", "--", "sh", "-c",
                  "cat /proc/cmdline; stat -c '%s %a' /proc/cmdline", sc=sc)
    assert (r.returncode, r.stdout) == (0, "kho=on console=ttyS0\n21 444\n")


def test_dmesg_prints_the_emulated_log(sc: Scratch) -> None:
    r = khofs_run("--cmdline", "kho=on crashkernel=64M", "--", "sh", "-c",
                  "dmesg; echo '<3>from userspace' > /dev/kmsg; dmesg -x | tail -1; "
                  "setpriv --reuid=65534 dmesg; echo nobody=$?", sc=sc)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"\[ +\d+\.\d{6}\] Kernel command line: kho=on crashkernel=64M",
                        lines[0])
    assert re.fullmatch(r"\[ +\d+\.\d{6}\] crashkernel reserved: 0x[0-9a-f]{16} - "
                        r"0x[0-9a-f]{16} \(64 MB\)", lines[1])
    assert re.fullmatch(r"user  :err   : \[ +\d+\.\d{6}\] from userspace", lines[2])
    # Debian's dmesg_restrict: reading the log wants CAP_SYSLOG
    assert lines[3] == "nobody=1"
    assert "dmesg: read kernel buffer failed: Operation not permitted" in r.stderr


def test_syslog_is_the_emulated_kernels(sc: Scratch) -> None:
    """dmesg -S reads through syslog(2), -C clears, -n sets the console level: the emulated
    kernel's, never the host's."""
    r = khofs_run("--console", "--", "sh", "-c",
                  "dmesg -S; dmesg -C; dmesg -S; echo cleared; dmesg -n 1; "
                  "echo '<4>quiet now' > /dev/kmsg; dmesg -S; "
                  "setpriv --reuid=65534 dmesg -S; echo nobody=$?", sc=sc)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"\[ +\d+\.\d{6}\] Kernel command line: kho=on", lines[0])
    assert lines[1] == "cleared"
    assert re.fullmatch(r"\[ +\d+\.\d{6}\] quiet now", lines[2])
    assert lines[3] == "nobody=1"
    console = r.stderr.splitlines()
    assert len(console) == 2 and console[0].endswith("] Kernel command line: kho=on")
    assert console[1] == "dmesg: read kernel buffer failed: Operation not permitted"


def test_proc_kmsg_is_syslogs_read(sc: Scratch) -> None:
    """/proc/kmsg: each record once, then it waits for the next (EAGAIN with O_NONBLOCK)."""
    r = khofs_run("--", "sh", "-c",
                  "dd if=/proc/kmsg bs=4096 count=1 iflag=nonblock status=none; "
                  "dd if=/proc/kmsg bs=4096 count=1 iflag=nonblock status=none; echo again=$?; "
                  "(sleep 0.3; echo '<6>later' > /dev/kmsg) & "
                  "dd if=/proc/kmsg bs=4096 count=1 status=none; wait", sc=sc)
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"<5>\[ +\d+\.\d{6}\] Kernel command line: kho=on", lines[0])
    assert lines[1] == "again=1"
    assert re.fullmatch(r"<14>\[ +\d+\.\d{6}\] later", lines[2])
    assert "Resource temporarily unavailable" in r.stderr


def test_iomem_shows_addresses_only_to_cap_sys_admin(sc: Scratch) -> None:
    r = khofs_run("--cmdline", "kho=on crashkernel=256M", "--", "sh", "-c",
                  "grep -E 'Crash|^00100000' /proc/iomem; "
                  "setpriv --reuid=65534 grep -E 'Crash|^00000000' /proc/iomem | head -2", sc=sc)
    assert r.stdout == ("00100000-7fffffff : System RAM\n  6c000000-7bffffff : Crash kernel\n"
                        "00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n")


def test_console_copies_the_kernel_log_to_stderr(sc: Scratch) -> None:
    r = khofs_run("--console", "--", "true", sc=sc)
    assert r.returncode == 0
    assert re.fullmatch(r"\[ +\d+\.\d{6}\] Kernel command line: kho=on\n", r.stderr)
    quiet = khofs_run("--console", "--cmdline", "kho=on quiet", "--", "true", sc=sc)
    assert (quiet.returncode, quiet.stderr) == (0, "")  # notice is above the quiet level


def test_exit_status_is_commands(sc: Scratch) -> None:
    assert khofs_run("--", "sh", "-c", "exit 7", sc=sc).returncode == 7
    # PID 1 does not die of a signal sent from inside its namespace (no handler)
    assert khofs_run("--", "sh", "-c", "kill -9 $$; echo alive", sc=sc).stdout == "alive\n"
    r = khofs_run("--", str(sc.path / "no-such-command"), sc=sc)
    assert r.returncode == 127
    assert r.stderr == f"khofs: run: {sc.path / 'no-such-command'}: No such file or directory\n"
    r = khofs_run("--", str(sc.file("not-executable", "#!/bin/sh\n")), sc=sc)
    assert r.returncode == 126 and "Permission denied" in r.stderr
    sc.nothing_left()


@pytest.mark.parametrize(("args", "message"), [
    (["--boots", "0", "--", "true"], "argument --boots: invalid value '0': a positive integer"),
    (["--boots", "-1", "--", "true"], "argument --boots: invalid value '-1': a positive integer"),
    (["--boots", "two", "--", "true"], "argument --boots: invalid value 'two': a positive "
     "integer"),
    (["--root", "/etc/hostname"], "--root /etc/hostname: not a directory"),
    (["--initrd", "/nonexistent.cpio"], "--initrd /nonexistent.cpio: No such file or directory"),
    (["--initrd", "/etc/hostname"], "--initrd /etc/hostname: not a newc cpio archive "
     "(gzip-compressed or not): no newc header at byte 0"),
    (["--initrd", "x.cpio", "--root", "/"], "argument --root: not allowed with argument "
     "--initrd"),
    ([], "run: no COMMAND given (khofs run [options] -- COMMAND, or --initrd/--root for /init)"),
    (["--machine", "mainframe", "--", "true"], "mainframe"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_starts(sc: Scratch, args: list[str],
                                                         message: str) -> None:
    r = khofs_run(*args, sc=sc)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert r.stdout == ""
    sc.nothing_left()


def test_a_truncated_initrd_is_bad_input(sc: Scratch) -> None:
    archive = newc([("init", 0o100755, b"#!/bin/sh\n" * 100)])
    path = sc.file("cut.cpio", archive[:300])
    r = khofs_run("--initrd", str(path), sc=sc)
    assert r.returncode == 2
    assert r.stderr == (f"khofs: --initrd {path}: not a newc cpio archive (gzip-compressed "
                        "or not): init: the archive ends inside it\n")


def test_killing_khofs_run_leaves_nothing(sc: Scratch) -> None:
    env = dict(os.environ, TMPDIR=str(sc.tmpdir))
    proc = subprocess.Popen([*KHOFS, "run", "--", "sh", "-c", "echo up; sleep 60"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            cwd=sc.path)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            sc.nothing_left()
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_sigterm_to_khofs_run_ends_the_run(sc: Scratch) -> None:
    env = dict(os.environ, TMPDIR=str(sc.tmpdir))
    proc = subprocess.Popen([*KHOFS, "run", "--", "sh", "-c", "echo up; sleep 60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=sc.path)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    sc.nothing_left()


def test_mounts_inside_the_run_are_the_machines(sc: Scratch, user: list[str] | None) -> None:
    dbg = sc.dir("dbg")
    script = (f"mount -t debugfs none {dbg} && ls {dbg} && umount {dbg} && ls {dbg} && "
              "umount /proc && mount -t proc proc /proc && cat /proc/cmdline && "
              "umount /sys && mount -t sysfs sysfs /sys && cat /sys/kernel/kexec_loaded && "
              "ls /sys/kernel/debug && ls /sys/firmware/memmap | wc -l && "
              f"mount -t tmpfs tmpfs {dbg} && touch {dbg}/x && umount {dbg} && ls {dbg}")
    r = khofs_run("--", "sh", "-c", script, sc=sc, user=user)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == "kho\nkho=on\n0\nkho\n4\n"
    assert list(dbg.iterdir()) == []


def test_examples_run_unmodified_across_two_boots(sc: Scratch) -> None:
    image = sc.file("bzImage", bzimage())
    sc.file("mydrv.dts", DTS)
    producers = sc.file("producers.toml", '[[producer]]\nname = "mydrv"\ndts = "mydrv.dts"\n'
                        'preserve = ["0x100000000+2M"]\n')
    r = khofs_run("--boots", "2", "--producers", str(producers), "--", "sh",
                  str(EXAMPLES / "kho-admin-guide.sh"), str(image), sc=sc)
    assert r.returncode == 0, r.stderr
    assert "finalized: 1\n" in r.stdout and "next kernel:\n" in r.stdout
    assert "sub-tree mydrv:\n" in r.stdout and 'compatible = "mydrv-v1";' in r.stdout
    assert r.stdout.count('compatible = "kho-v1";') == 2  # out/fdt, then in/fdt
    out = sc.dir("triage")
    r = khofs_run("--boots", "2", "--producers", str(producers), "--", "sh",
                  str(EXAMPLES / "luo-triage.sh"), str(image), str(out), sc=sc)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "handover intact: mydrv \n"
    assert (out / "before/fdt").read_bytes() == (out / "after/fdt").read_bytes()


def test_the_reboot_past_the_last_boot_ends_the_run(sc: Scratch) -> None:
    raw = build("raw_calls.c", sc.path / "raw_calls")
    r = khofs_run("--boots", "2", "--", "sh", "-c",
                  f"cat /sys/kernel/debug/kho/out/scratch_len >/dev/null; "
                  f"exec {raw} guard reboot 0x1234567", sc=sc)
    assert r.returncode == 0
    assert r.stdout == "guard -> 0\nguard -> 0\n"
    assert r.stderr == ("khofs: run: the machine rebooted (restart); boot 3 would start, past "
                        "--boots 2: stopping\n")
