"""The KHO handover formats, one module per ABI header, as the kernel's include/linux/kho/abi/.

What a previous and a next kernel must agree on: FDT compatibles and property names, the
preserved-memory map's layout. Constants only; the code that writes and reads them lives in
khofs.engine (kernel side) and khofs.producers (drivers). Imports nothing.
"""
