"""A small debugfs with the kernel's read/write semantics (fs/debugfs, fs/libfs.c): dentries,
inodes, simple attributes, show files and blobs. Knows nothing of KHO or FUSE.

Imports: khofs.lib.
"""
