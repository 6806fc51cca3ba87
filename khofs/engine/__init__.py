"""The emulated kernel: the machine's hardware, memblock and the boot, scratch areas, KHO's
outgoing and incoming halves, preservation, kexec, and the machine across kexecs (System)
with the system calls a machine answers (kexec_file_load, kexec_load, reboot: the caller is a
protocol, khofs.engine.uaccess) and the /proc, /sys and /dev/kmsg files kexec tools read.
Drivers come from outside, as a table of initcalls (khofs.engine.driver). No I/O: errors
are the kernel's negative errnos.

Imports: khofs.lib, khofs.debugfs.
"""
