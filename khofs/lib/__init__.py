"""Ports of what the kernel's lib/ and scripts/dtc/libfdt give: kstrtox, the command-line
helpers (memparse, parse_args), libfdt's sequential writer, its read-write half (fdt_rw)
and its read side (fdt_ro); and khofs's own small helpers beside them: size formats,
address-range sets, bounded reads of input files. Pure functions, no state.

Imports: nothing of khofs.
"""
