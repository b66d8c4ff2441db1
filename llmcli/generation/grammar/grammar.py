"""A compiled grammar and the matcher state of one sequence, in llama.cpp's model.

llama.cpp matches a grammar with a set of pushdown stacks of grammar elements (positions in the
rules): each stack's top is a character class still to match (or a token), an empty stack means
the grammar is complete. A character moves every stack whose top matches it to its next element,
expanding rule references into one stack per alternative (llama_grammar_advance_stack).

Here a stack is a number: (top position, rest of the stack) interned, so equal stacks are the same
number and a stack *set* is interned too. Characters only matter through the character classes of
the grammar: the code points are cut into "atoms" (ranges no class boundary falls inside), and
`set x atom -> set` is a table filled row by row the first time a set is met, shared by every
sequence using the grammar. A matcher's state is then three numbers: its set, and the partial UTF-8
character left by the last token (value so far, bytes still to come).

Which tokens may come next is the walk of walk.py over the vocabulary's sorted pieces; its result
is cached per (state, vocabulary), as states repeat (inside a JSON string, after a comma, ...).
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from .parse import (ALT, CHAR, CHAR_ALT, CHAR_ANY, CHAR_NOT, CHAR_RNG_UPPER, END, RULE_REF, TOKEN, TOKEN_NOT,
                    GrammarError, ParsedGrammar, check_left_recursion, parse_gbnf)
from .tokens import TokenIndex
from .walk import NEED_ROW, UTF8_FOLLOWING, filter_tokens, match_partial

EMPTY_STACK = 0  # the stack id of the empty stack: the grammar is complete along it
DEAD = -1  # the set id of "no stack left": the input does not fit the grammar
MASK_CACHE_SIZE = 128  # token masks kept per (grammar, vocabulary), 32 KiB each for 262k tokens


class MatchState(NamedTuple):
    """Where a sequence is in its grammar: a stack-set id and a partial UTF-8 character."""

    set_id: int
    partial_value: int = 0
    partial_remain: int = 0  # bytes the partial character still needs (0: none pending)


def decode_utf8(piece: bytes, value: int, remain: int) -> tuple[list[int], int, int]:
    """llama.cpp's decode_utf8: the code points of `piece` continuing a partial character, and the
    partial character it leaves (remain -1: invalid UTF-8, then the code points do not matter)."""
    points: list[int] = []
    i, n = 0, len(piece)
    while i < n and remain > 0:  # continuation bytes of the previous piece's character
        byte = piece[i]
        if byte >> 6 != 2:
            return [], 0, -1
        value = (value << 6) | (byte & 0x3F)
        i += 1
        remain -= 1
        if remain == 0:
            points.append(value)
    while i < n:
        byte = piece[i]
        remain = int(UTF8_FOLLOWING[byte >> 4])
        if remain < 0:
            return [], 0, -1
        value = byte & ((1 << (7 - remain)) - 1)
        i += 1
        while i < n and remain > 0:  # llama.cpp does not check these bytes
            value = (value << 6) | (piece[i] & 0x3F)
            i += 1
            remain -= 1
        if remain == 0:
            points.append(value)
    return points, value, remain


class Grammar:
    """A parsed, checked grammar (immutable; share it between sequences). Make one with
    `compile_grammar(text, root)`."""

    def __init__(self, parsed: ParsedGrammar, root: str, text: str):
        self.text, self.root, self.parsed = text, root, parsed
        types, values, starts = [], [], []
        for rule in parsed.rules:
            starts.append(len(types))
            for kind, value in rule:
                types.append(kind)
                values.append(value)
        # the walk reads one element past a class's last one: each rule ends with END, so it exists
        self.types = np.array(types, np.int32)
        self.values = np.array(values, np.int64)
        self._types, self._values, self._starts = types, values, starts
        self._cut_atoms()
        self._lock = threading.RLock()
        # interned stacks: id -> (top position, parent id); id 0 is the empty stack
        self._stack_top: list[int] = [-1]
        self._stack_parent: list[int] = [-1]
        self._stack_ids: dict[tuple[int, int], int] = {}
        self._advanced: dict[int, frozenset[int]] = {}
        self._class_atoms: dict[int, tuple[list[int], int]] = {}
        # interned stack sets and what the walk needs of them
        self._sets: list[tuple[int, ...]] = []
        self._set_ids: dict[tuple[int, ...], int] = {}
        self._rows_done: list[bool] = []
        n = 64
        self.next_table = np.full((n, self.n_atoms), NEED_ROW, np.int32)
        self.tops_lo = np.zeros(n, np.int32)
        self.tops_hi = np.zeros(n, np.int32)
        self.tops = np.zeros(256, np.int32)
        self._n_tops = 0
        self._masks: "weakref.WeakKeyDictionary[TokenIndex, OrderedDict]" = weakref.WeakKeyDictionary()
        start = set()
        for alt_start in self._alternatives(starts[parsed.symbol_ids[root]]):
            stack = EMPTY_STACK if self._ends(alt_start) else self._push(alt_start, EMPTY_STACK)
            start |= self._advance(stack)
        self.start = MatchState(self._intern(start))

    # -- structure ---------------------------------------------------------------------------

    def _ends(self, pos: int) -> bool:
        return self._types[pos] in (END, ALT)

    def _alternatives(self, pos: int):
        """Start positions of the alternatives of the rule starting at pos."""
        types = self._types
        while True:
            yield pos
            while types[pos] not in (END, ALT):
                pos += 1
            if types[pos] == END:
                return
            pos += 1

    def _cut_atoms(self) -> None:
        """Split the code points at every class boundary: within an atom, every class of the
        grammar says the same for every code point."""
        types, values = self._types, self._values
        cuts = set()
        for pos, kind in enumerate(types):
            if kind in (CHAR, CHAR_NOT, CHAR_ALT):
                low = values[pos]
                high = values[pos + 1] if types[pos + 1] == CHAR_RNG_UPPER else low
                cuts.add(low)
                cuts.add(high + 1)
        cuts.discard(0)
        self.bounds = np.array(sorted(cuts), np.int64)  # atom of cp: bounds <= cp counted
        self._bounds = self.bounds.tolist()
        self.n_atoms = len(self._bounds) + 1
        self._atom_first = [0] + self._bounds  # a code point of each atom
        self.ascii_atoms = np.searchsorted(self.bounds, np.arange(128), side="right").astype(np.int32)

    def atom(self, code_point: int) -> int:
        return bisect.bisect_right(self._bounds, code_point)

    def _match_char(self, pos: int, code_point: int) -> tuple[bool, int]:
        """Does the class at pos match code_point, and the position after the class."""
        types, values = self._types, self._values
        positive = types[pos] in (CHAR, CHAR_ANY)
        found = False
        while True:
            if types[pos + 1] == CHAR_RNG_UPPER:
                found = found or values[pos] <= code_point <= values[pos + 1]
                pos += 2
            elif types[pos] == CHAR_ANY:
                found = True
                pos += 1
            else:
                found = found or values[pos] == code_point
                pos += 1
            if types[pos] != CHAR_ALT:
                return found == positive, pos

    # -- stacks and sets ---------------------------------------------------------------------

    def _push(self, pos: int, parent: int) -> int:
        key = (pos, parent)
        stack = self._stack_ids.get(key)
        if stack is None:
            stack = self._stack_ids[key] = len(self._stack_top)
            self._stack_top.append(pos)
            self._stack_parent.append(parent)
        return stack

    def _after(self, stack: int, pos: int) -> int:
        """The stack without its top, continued at pos if pos is not the end of an alternative."""
        parent = self._stack_parent[stack]
        return parent if self._ends(pos) else self._push(pos, parent)

    def _advance(self, stack: int) -> frozenset[int]:
        """The stacks a stack stands for once its rule references are expanded: each ends at a
        character class or token to match, or is empty (llama_grammar_advance_stack)."""
        done = self._advanced.get(stack)
        if done is not None:
            return done
        out, seen, todo = set(), set(), [stack]
        types, values, starts = self._types, self._values, self._starts
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if current == EMPTY_STACK:
                out.add(current)
                continue
            pos = self._stack_top[current]
            if types[pos] == RULE_REF:
                below = self._after(current, pos + 1)
                for alt_start in self._alternatives(starts[values[pos]]):
                    todo.append(below if self._ends(alt_start) else self._push(alt_start, below))
            else:
                out.add(current)
        done = self._advanced[stack] = frozenset(out)
        return done

    def _intern(self, stacks) -> int:
        if not stacks:
            return DEAD
        key = tuple(sorted(stacks))
        set_id = self._set_ids.get(key)
        if set_id is not None:
            return set_id
        set_id = self._set_ids[key] = len(self._sets)
        self._sets.append(key)
        self._rows_done.append(False)
        if set_id >= self.next_table.shape[0]:
            grow = self.next_table.shape[0]
            self.next_table = np.concatenate([self.next_table, np.full((grow, self.n_atoms), NEED_ROW, np.int32)])
            self.tops_lo = np.concatenate([self.tops_lo, np.zeros(grow, np.int32)])
            self.tops_hi = np.concatenate([self.tops_hi, np.zeros(grow, np.int32)])
        chars = [self._stack_top[s] for s in key
                 if s != EMPTY_STACK and self._types[self._stack_top[s]] not in (TOKEN, TOKEN_NOT)]
        if self._n_tops + len(chars) > self.tops.shape[0]:
            self.tops = np.concatenate([self.tops, np.zeros(max(len(chars), self.tops.shape[0]), np.int32)])
        self.tops[self._n_tops:self._n_tops + len(chars)] = chars
        self.tops_lo[set_id], self.tops_hi[set_id] = self._n_tops, self._n_tops + len(chars)
        self._n_tops += len(chars)
        return set_id

    def _atoms_of_class(self, pos: int) -> tuple[list[int], int]:
        found = self._class_atoms.get(pos)
        if found is None:
            matched = [a for a, first in enumerate(self._atom_first) if self._match_char(pos, first)[0]]
            found = self._class_atoms[pos] = (matched, self._match_char(pos, 0)[1])
        return found

    def _fill_row(self, set_id: int) -> None:
        """next_table[set_id, atom] for every atom: the set each character class leads to."""
        targets: dict[int, set[int]] = {}
        for stack in self._sets[set_id]:
            if stack == EMPTY_STACK:
                continue
            pos = self._stack_top[stack]
            if self._types[pos] in (TOKEN, TOKEN_NOT):
                continue  # a token is matched by its id, never by characters
            atoms, after = self._atoms_of_class(pos)
            if not atoms:
                continue
            moved = self._advance(self._after(stack, after))
            for atom in atoms:
                targets.setdefault(atom, set()).update(moved)
        row = np.full(self.n_atoms, DEAD, np.int32)
        for atom, stacks in targets.items():
            row[atom] = self._intern(stacks)
        self.next_table[set_id] = row
        self._rows_done[set_id] = True

    def _next(self, set_id: int, code_point: int) -> int:
        if not self._rows_done[set_id]:
            self._fill_row(set_id)
        return int(self.next_table[set_id, self.atom(code_point)])

    # -- questions about a state -------------------------------------------------------------

    def can_end(self, state: MatchState) -> bool:
        """Is the grammar complete here (an end-of-generation token allowed)?"""
        return EMPTY_STACK in self._sets[state.set_id]

    def must_end(self, state: MatchState) -> bool:
        """Is the grammar complete with nothing that could follow?"""
        return self._sets[state.set_id] == (EMPTY_STACK,)

    def _token_stacks(self, set_id: int) -> list[tuple[int, int, int]]:
        """(kind, token id, stack) of the stacks whose top is a token."""
        types, values, top = self._types, self._values, self._stack_top
        return [(types[top[s]], values[top[s]], s) for s in self._sets[set_id]
                if s != EMPTY_STACK and types[top[s]] in (TOKEN, TOKEN_NOT)]

    def _char_stacks(self, set_id: int) -> int:
        """The set of the stacks whose top is a character class (DEAD if none)."""
        types, top = self._types, self._stack_top
        return self._intern([s for s in self._sets[set_id]
                             if s != EMPTY_STACK and types[top[s]] not in (TOKEN, TOKEN_NOT)])

    def _partial_fits(self, set_id: int, value: int, remain: int) -> bool:
        lo, hi = int(self.tops_lo[set_id]), int(self.tops_hi[set_id])
        return any(match_partial(self.types, self.values, int(pos), value, remain) for pos in self.tops[lo:hi])

    def allows(self, state: MatchState, token: int, piece: bytes) -> bool:
        """Would the grammar accept this token (its piece) next? (llama.cpp's verdict for one
        candidate; end-of-generation tokens are the caller's business: see can_end.)"""
        with self._lock:
            for kind, value, _ in self._token_stacks(state.set_id):
                if (value == token) == (kind == TOKEN):
                    return True
            points, value, remain = decode_utf8(piece, state.partial_value, state.partial_remain)
            if remain < 0 or not piece or 0 in points:
                return False
            set_id = state.set_id
            for point in points:
                set_id = self._next(set_id, point)
                if set_id == DEAD:
                    return False
            return remain == 0 or self._partial_fits(set_id, value, remain)

    def accept(self, state: MatchState, token: int, piece: bytes) -> MatchState:
        """The state after a token (llama_grammar_accept_token); GrammarError if it does not fit."""
        with self._lock:
            points, value, remain = decode_utf8(piece, state.partial_value, state.partial_remain)
            stacks: set[int] = set()
            for kind, token_id, stack in self._token_stacks(state.set_id):
                if (token_id == token) == (kind == TOKEN):
                    stacks |= self._advance(self._after(stack, self._stack_top[stack] + 1))
            set_id = self._char_stacks(state.set_id) if remain >= 0 else DEAD
            for point in points:
                if set_id == DEAD:
                    break
                set_id = self._next(set_id, point)
            if set_id != DEAD:
                stacks.update(self._sets[set_id])
            if not stacks:
                raise GrammarError(f"token {token} ({piece!r}) does not fit the grammar here", "mismatch")
            return MatchState(self._intern(stacks), value, max(remain, 0))

    def accept_bytes(self, state: MatchState, text: bytes) -> MatchState | None:
        """The state after some text (no token ids involved), None if it does not fit."""
        try:
            return self.accept(state, -1, text)
        except GrammarError:
            return None

    def matches(self, text: str | bytes) -> bool:
        """Is `text` a complete sentence of the grammar? (each code point fed as llama.cpp's
        tests feed strings)."""
        data = text.encode("utf-8") if isinstance(text, str) else text
        state = self.start
        for char in data.decode("utf-8", "replace"):
            state = self.accept_bytes(state, char.encode("utf-8"))
            if state is None:
                return False
        return self.can_end(state)

    # -- the vocabulary ----------------------------------------------------------------------

    def token_mask(self, state: MatchState, index: TokenIndex) -> np.ndarray:
        """uint8[n_vocab]: 1 for each token the grammar accepts next (end-of-generation tokens not
        treated specially: the caller decides those with can_end). Cached per state."""
        with self._lock:
            cache = self._masks.get(index)
            if cache is None:
                cache = self._masks[index] = OrderedDict()
            packed = cache.get(state)
            if packed is not None:
                cache.move_to_end(state)
                return np.unpackbits(packed, count=index.n_vocab)
            allowed = self._walk(state, index)
            cache[state] = np.packbits(allowed)
            if len(cache) > MASK_CACHE_SIZE:
                cache.popitem(last=False)
            return allowed

    def _walk(self, state: MatchState, index: TokenIndex) -> np.ndarray:
        allowed = np.zeros(index.n_vocab, np.uint8)
        depth = index.max_len + 1
        depth_set = np.zeros(depth, np.int32)
        depth_value = np.zeros(depth, np.int64)
        depth_remain = np.zeros(depth, np.int64)
        depth_check = np.zeros(depth, np.bool_)
        depth_set[0], depth_value[0], depth_remain[0] = state
        depth_check[0] = state.partial_remain > 0
        start = 0
        while True:
            start, need = filter_tokens(index.order, index.lcp, index.data, index.offsets, index.lengths, start,
                                        self.next_table, self.ascii_atoms, self.bounds, self.tops_lo,
                                        self.tops_hi, self.tops, self.types, self.values, depth_set,
                                        depth_value, depth_remain, depth_check, allowed, UTF8_FOLLOWING)
            if need < 0:
                break
            self._fill_row(need)
        for kind, token, _ in self._token_stacks(state.set_id):
            if kind == TOKEN:
                if 0 <= token < index.n_vocab and index.nonempty[token]:
                    allowed[token] = 1
            else:
                others = index.nonempty.astype(np.uint8)
                if 0 <= token < index.n_vocab:
                    others[token] = 0
                allowed |= others
        return allowed


COMPILED_CACHE_SIZE = 16  # grammars kept compiled: a server's requests often repeat one schema

_compiled: OrderedDict[tuple[str, str], Grammar] = OrderedDict()
_compiled_lock = threading.Lock()


def compile_grammar(text: str, root: str = "root") -> Grammar:
    """Parse and check GBNF text; the Grammar matches from rule `root`. GrammarError (a
    BadInputError) names what is wrong and where. The same text gives the same Grammar object
    while it is among the last few compiled, so sequences share what it has worked out."""
    if not isinstance(text, str):
        raise GrammarError(f"a grammar must be text, got {type(text).__name__}", "empty-grammar")
    key = (text, root)
    with _compiled_lock:
        grammar = _compiled.get(key)
        if grammar is not None:
            _compiled.move_to_end(key)
            return grammar
    parsed = parse_gbnf(text)
    if root not in parsed.symbol_ids:
        raise GrammarError(f"grammar: it has no rule '{root}' to start from (rules: "
                           f"{', '.join(n for n in parsed.names if '_' not in n)[:200]})", "missing-root")
    check_left_recursion(parsed)
    grammar = Grammar(parsed, root, text)
    with _compiled_lock:
        _compiled[key] = grammar
        while len(_compiled) > COMPILED_CACHE_SIZE:
            _compiled.popitem(last=False)
    return grammar
