"""`khofs run`'s machine: the namespaces COMMAND runs in and what it sees there.

Imports: khofs.daemon, khofs.engine, khofs.lib, khofs.errors.
"""
