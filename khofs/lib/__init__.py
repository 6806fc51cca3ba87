"""Helpers that mirror the kernel's lib/: shared by the engine and the debugfs layer."""
