"""Grammar-constrained sampling: GBNF grammars and JSON schemas, as llama.cpp has them.

    from llmcli.generation.grammar import GrammarError, compile_grammar, schema_to_grammar, JSON_OBJECT_GBNF
    g = compile_grammar('root ::= "yes" | "no"')           # -> Grammar (immutable, shareable)
    g = compile_grammar(schema_to_grammar({"type": "object", "properties": {"a": {"type": "integer"}}}))
    Request(prompt_ids, grammar=g)                           # each Sequence keeps its own state

* `parse` - GBNF text -> rules (llama.cpp's syntax and rewrites), GrammarError for bad grammars.
* `grammar` - `Grammar`: llama.cpp's pushdown stacks, interned; a sequence's state is a `MatchState`.
* `tokens` - the vocabulary's pieces sorted for the token filter (built once per tokenizer).
* `walk` - the numba walk over those pieces: which tokens may come next.
* `schema` - JSON schema -> GBNF text, as llama.cpp's json_schema_to_grammar writes it.
* `matcher` - `GrammarMatcher`: a grammar bound to a tokenizer, one per sequence.
"""

from .grammar import Grammar, MatchState, compile_grammar
from .matcher import GrammarMatcher
from .parse import GrammarError
from .schema import JSON_OBJECT_GBNF, schema_to_grammar

__all__ = ["Grammar", "GrammarError", "GrammarMatcher", "JSON_OBJECT_GBNF", "MatchState", "compile_grammar",
           "schema_to_grammar"]
