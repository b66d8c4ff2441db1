"""`GrammarMatcher`: one sequence's grammar state, bound to its tokenizer's vocabulary.

It answers what sampling needs, as llama.cpp's grammar sampler does (common/sampling.cpp): is the
token the chain picked allowed (most of the time it is, and checking one token costs
microseconds); if not, the logits with every refused token at -inf for the chain to pick again;
then `accept` the token picked. End-of-generation tokens are allowed exactly when the grammar is
complete.
"""

from __future__ import annotations

import numpy as np

from .grammar import Grammar, MatchState
from .tokens import TokenIndex


class GrammarMatcher:
    def __init__(self, grammar: Grammar, tokenizer, end_ids=frozenset()):
        self.grammar = grammar
        self.index = TokenIndex.of(tokenizer)
        self.end_ids = np.array(sorted(int(t) for t in end_ids), np.int64)
        self._end_set = frozenset(int(t) for t in end_ids)
        self.state: MatchState = grammar.start

    @property
    def can_end(self) -> bool:
        return self.grammar.can_end(self.state)

    @property
    def must_end(self) -> bool:
        """Complete, and nothing else could follow: the sequence ends here."""
        return self.grammar.must_end(self.state)

    def allows(self, token: int) -> bool:
        if token in self._end_set:
            return self.can_end
        return self.grammar.allows(self.state, token, self.index.piece(token))

    def mask(self) -> np.ndarray:
        """bool[n_vocab]: the tokens allowed next."""
        allowed = self.grammar.token_mask(self.state, self.index).view(np.bool_)
        if len(self.end_ids):
            allowed[self.end_ids] = self.can_end
        return allowed

    def masked(self, logits: np.ndarray) -> np.ndarray:
        """The logits with every token the grammar refuses at -inf."""
        allowed = self.mask()
        n = min(len(allowed), logits.shape[0])  # a model may have more rows than its vocabulary
        out = np.full(logits.shape[0], -np.inf, dtype=logits.dtype)
        out[:n] = np.where(allowed[:n], logits[:n], -np.inf)
        return out

    def accept(self, token: int) -> None:
        if token in self._end_set:
            return
        self.state = self.grammar.accept(self.state, token, self.index.piece(token))
