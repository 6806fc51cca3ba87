"""`khofs run`'s machine: the namespaces COMMAND runs in and what it sees there (the machine
files the run binds over /proc, /sys and /dev, and the tree its FUSE mount serves).

Imports: khofs.daemon, khofs.engine, khofs.debugfs, khofs.lib, khofs.errors.
"""
