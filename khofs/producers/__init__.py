"""What drivers do with KHO: the producers file and the producers it describes, the kernel's
own KHO users (memblock's reserve_mem handover, lib/test_kho.c), Python plugins, and the
boot table that hands them all to the engine.

Imports: khofs.engine, khofs.debugfs, khofs.lib, khofs.errors.
"""
