"""The `khofs` command and the pytest plugin: where user input becomes a machine.

Imports: khofs.run, khofs.daemon, khofs.machines, khofs.producers, khofs.engine,
khofs.debugfs, khofs.lib, khofs.errors.
"""
