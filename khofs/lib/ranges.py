"""Sets of physical address ranges, each a list of [start, end) pairs."""

from __future__ import annotations

Ranges = list[tuple[int, int]]


def merge(ranges: Ranges) -> Ranges:
    """Sorted, with overlapping and touching ranges joined."""
    out: Ranges = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """What both cover, merged."""
    return merge([(max(s1, s2), min(e1, e2)) for s1, e1 in a for s2, e2 in b
                  if max(s1, s2) < min(e1, e2)])


def minus(a: Ranges, b: Ranges) -> Ranges:
    """The parts of `a` outside `b`: `a` sorted and merged, `b` sorted and disjoint (ranges
    that touch may stay apart, as memblock's regions of different flags do)."""
    out: Ranges = []
    j = 0
    for start, end in a:
        pos = start
        while j < len(b) and b[j][1] <= pos:
            j += 1
        i = j
        while i < len(b) and b[i][0] < end:
            if b[i][0] > pos:
                out.append((pos, b[i][0]))
            pos = max(pos, b[i][1])
            i += 1
        if pos < end:
            out.append((pos, end))
    return out
