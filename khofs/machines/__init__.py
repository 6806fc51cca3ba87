"""The machines users name: presets, machine files, `host` (this computer), and what
`khofs machine show` prints of one.

Imports: khofs.engine, khofs.lib, khofs.errors.
"""
