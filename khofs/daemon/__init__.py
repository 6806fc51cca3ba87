"""A mount's life: the daemon that serves an emulated machine, the FUSE edge (the only
importer of a FUSE binding), the control socket, the RAM image a kexec hands to another
process, and where a daemon keeps its state.

Imports: khofs.engine, khofs.debugfs, khofs.lib, khofs.errors.
"""
