"""The emulated kernel: machine, memblock, command line, scratch, KHO. Pure Python, no I/O."""
