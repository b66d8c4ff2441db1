"""Find where each string of a long GGUF string array starts, compiled with numba.

A vocabulary is 32k-262k consecutive (u64 length, bytes) records; walking them in Python took
~150 ms of a 262k-token model's load, this loop ~1 ms. Imported lazily by the reader, only for
arrays long enough to pay for loading the compiled function.
"""

from __future__ import annotations

import numpy as np
from numba import njit

OK, TRUNCATED, TOO_LONG = 0, 1, 2


@njit(cache=True)
def string_starts(buf, pos, count, starts):
    """Fill starts[i] with the offset of string i's length field, from byte `pos` of buf (uint8).

    Returns (status, strings read, offset reached): TRUNCATED when a length field runs past the
    end of buf, TOO_LONG when a length exceeds the bytes left (offset = that length field's end)."""
    end = buf.size
    for i in range(count):
        if pos + 8 > end:
            return TRUNCATED, i, pos
        n = np.uint64(0)
        for k in range(8):
            n |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
        if n > np.uint64(end - pos - 8):
            return TOO_LONG, i, pos + 8
        starts[i] = pos
        pos += 8 + np.int64(n)
    return OK, count, pos


@njit(cache=True)
def join_strings(buf, starts, end, out):
    """The strings at `starts` (the last ending at `end`), each preceded by a NUL, into out (uint8,
    len(starts) + their total length). Returns False if a string itself holds a NUL byte (then
    the NUL-split of out would not give back the strings)."""
    o = 0
    clean = True
    count = starts.size
    for i in range(count):
        stop = starts[i + 1] if i + 1 < count else end
        out[o] = 0
        o += 1
        for p in range(starts[i] + 8, stop):
            b = buf[p]
            clean &= b != 0
            out[o] = b
            o += 1
    return clean
