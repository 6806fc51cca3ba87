"""What drivers do with KHO: the producers file and the producers it describes, the kernel's
own KHO users (memblock's reserve_mem handover, lib/test_kho.c), Python plugins, and the
boot table that hands them all to the engine; and live updates from one kernel version to
another with them, classified (compat).

Imports: khofs.engine, khofs.debugfs, khofs.lib, khofs.errors.
"""
