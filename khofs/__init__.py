"""khofs: a FUSE filesystem serving a Linux debugfs tree for Kexec HandOver (KHO).

Packages, lowest layer first; each imports only the layers its docstring names:
lib, debugfs, engine, producers, machines, daemon, run, cli; errors.py stands beside lib.
"""

__version__ = "0.1.0"
