"""A small debugfs with the kernel's read/write semantics; knows nothing of FUSE or KHO."""
