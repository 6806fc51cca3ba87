"""Physical memory (khofs.engine.physmem): reads and writes across pages, against a flat
bytearray, including pages never written (they read as zeros)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from khofs.engine.physmem import PhysMem

SPAN = 6 * 65536  # a few pages of the largest page size


@settings(max_examples=300, deadline=None)
@given(page=st.sampled_from([4096, 16384, 65536]),
       writes=st.lists(st.tuples(st.integers(0, SPAN - 1), st.binary(min_size=1,
                                                                      max_size=70000)),
                       max_size=6),
       reads=st.lists(st.tuples(st.integers(0, SPAN), st.integers(0, SPAN)), min_size=1,
                      max_size=10))
def test_reads_see_the_writes_byte_for_byte(page: int, writes: list[tuple[int, bytes]],
                                            reads: list[tuple[int, int]]) -> None:
    mem, flat = PhysMem(page), bytearray(2 * SPAN + 70000)
    for phys, data in writes:
        mem.write(phys, data)
        flat[phys:phys + len(data)] = data
    for phys, size in reads:
        assert mem.read(phys, size) == bytes(flat[phys:phys + size])


def test_a_read_is_a_copy() -> None:
    mem = PhysMem()
    mem.write(0x1000, b"abc")
    one, many = mem.read(0x1000, 3), mem.read(0x0, 0x3000)
    mem.write(0x1000, b"xyz")
    assert (one, many[0x1000:0x1003]) == (b"abc", b"abc")
    assert isinstance(one, bytes) and isinstance(many, bytes)
