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


def to_grammar(grammar: "str | Grammar | None" = None, json_schema: dict | None = None) -> Grammar | None:
    """The Grammar a caller asks for: GBNF text (or a compiled Grammar), or a JSON schema (a dict),
    or neither (None). Both at once is a GrammarError."""
    if grammar is not None and json_schema is not None:
        raise GrammarError("give a grammar or a JSON schema, not both", "schema")
    if json_schema is not None:
        if not isinstance(json_schema, dict):
            raise GrammarError(f"a JSON schema must be a JSON object, got {type(json_schema).__name__}", "schema")
        return compile_grammar(schema_to_grammar(json_schema))
    if grammar is None or isinstance(grammar, Grammar):
        return grammar
    return compile_grammar(grammar)


__all__ = ["Grammar", "GrammarError", "GrammarMatcher", "JSON_OBJECT_GBNF", "MatchState", "compile_grammar",
           "schema_to_grammar", "to_grammar"]
