"""khofs: a FUSE filesystem serving a Linux debugfs tree for Kexec HandOver (KHO)."""

__version__ = "0.1.0"
