"""The hot loop of grammar-constrained sampling: which tokens of the vocabulary may come next.

The grammar side (grammar.py) turns the matcher's state into a set id; a set id and a character
class ("atom", see grammar.py) lead to the next set id through `next_table`, filled row by row as
sets are met. `filter_tokens` walks every piece of the vocabulary in sorted order (tokens.py),
decoding UTF-8 byte by byte exactly as llama.cpp's grammar does (decode_utf8 in
src/llama-grammar.cpp): a character split over tokens continues from the matcher's partial one,
whose continuation bytes must be 10xxxxxx; within a piece, a lead byte takes the next bytes as they
come. A token is allowed when its characters keep some stack alive and, if it ends inside a
character, that partial character can still match (llama_grammar_match_partial_char).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .parse import CHAR, CHAR_ALT, CHAR_ANY, CHAR_RNG_UPPER

# UTF-8 lead byte's high nibble -> bytes that follow it (-1: not a lead byte), as llama.cpp decodes
UTF8_FOLLOWING = np.array([0] * 8 + [-1] * 4 + [1, 1, 2, 3], np.int64)

NEED_ROW = -2  # next_table entry of a row not computed yet; -1: no stack survives


@njit(cache=True)
def match_partial(types, values, pos, value, n_remain) -> bool:
    """Can some completion of a partial UTF-8 character (value bits so far, n_remain bytes to come)
    match the character class at pos?"""
    positive = types[pos] == CHAR or types[pos] == CHAR_ANY
    if n_remain < 0 or (n_remain == 1 and value < 2):  # invalid, or an overlong 2-byte form
        return False
    low = value << (n_remain * 6)
    high = low | ((1 << (n_remain * 6)) - 1)
    if low == 0:
        if n_remain == 2:
            low = 1 << 11
        elif n_remain == 3:
            low = 1 << 16
    while True:
        if types[pos + 1] == CHAR_RNG_UPPER:
            if values[pos] <= high and low <= values[pos + 1]:
                return positive
            pos += 2
        elif types[pos] == CHAR_ANY:
            return True
        else:
            if low <= values[pos] and values[pos] <= high:
                return positive
            pos += 1
        if types[pos] != CHAR_ALT:
            break
    return not positive


@njit(cache=True)
def filter_tokens(order, lcp, data, offsets, lengths, start,
                  next_table, ascii_atoms, bounds, tops_lo, tops_hi, tops, types, values,
                  depth_set, depth_value, depth_remain, depth_check, allowed, following):
    """Mark allowed[order[k]] = 1 for the pieces k >= start the grammar accepts from the state at
    depth 0 of the depth_* arrays. Returns (len(order), -1) when done, or (k, s) when the row of
    set s is needed: fill it and call again with start=k (the depth arrays stay valid up to lcp[k])."""
    n = order.shape[0]
    dead_at = 1 << 30  # pieces sharing at least this many bytes with the last one are refused too
    for k in range(start, n):
        if lcp[k] >= dead_at:
            continue
        dead_at = 1 << 30
        offset = offsets[k]
        length = lengths[k]
        d = lcp[k]
        s = depth_set[d]
        value = depth_value[d]
        remain = depth_remain[d]
        check = depth_check[d]
        alive = True
        while d < length:
            byte = np.int64(data[offset + d])
            code = -1
            if remain > 0:
                if check and (byte >> 6) != 2:
                    alive = False
                    break
                value = (value << 6) | (byte & 0x3F)
                remain -= 1
                if remain == 0:
                    code = value
                    check = False
            else:
                extra = following[byte >> 4]
                if extra < 0:
                    alive = False
                    break
                value = byte & ((1 << (7 - extra)) - 1)
                remain = extra
                check = False
                if extra == 0:
                    code = value
            if code >= 0:
                if code == 0:  # an overlong NUL: llama.cpp would end the piece here; refused
                    alive = False
                    break
                if code < 128:
                    atom = ascii_atoms[code]
                else:  # bounds <= code, by bisection
                    lo, hi = 0, bounds.shape[0]
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if bounds[mid] <= code:
                            lo = mid + 1
                        else:
                            hi = mid
                    atom = lo
                nxt = next_table[s, atom]
                if nxt == -2:
                    return k, s
                if nxt < 0:
                    alive = False
                    break
                s = nxt
            d += 1
            depth_set[d] = s
            depth_value[d] = value
            depth_remain[d] = remain
            depth_check[d] = check
        if not alive:
            dead_at = d + 1
            continue
        if remain == 0:
            allowed[order[k]] = 1
        else:
            for i in range(tops_lo[s], tops_hi[s]):
                if match_partial(types, values, tops[i], value, remain):
                    allowed[order[k]] = 1
                    break
    return n, -1
