"""include/linux/init.h: the initcall levels khofs runs, lowest first (do_initcalls runs them
in this order; within a level, in link order)."""

from __future__ import annotations

FS_INITCALL = 5
DEVICE_INITCALL = 6  # module_init of a built-in driver
LATE_INITCALL = 7
