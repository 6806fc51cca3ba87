"""The emulated kernel: the machine's hardware, memblock and the boot, scratch areas, KHO's
outgoing and incoming halves, preservation, kexec, and the machine across kexecs (System).
Drivers come from outside, as a table of initcalls (khofs.engine.driver). No I/O: errors
are the kernel's negative errnos.

Imports: khofs.lib, khofs.debugfs.
"""
