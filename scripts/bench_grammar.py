"""What a JSON-schema grammar costs on the demo model (Gemma 3 270M, 262k-token vocabulary).

    python scripts/bench_grammar.py [--threads 1] [--tokens 128] [--repeats 3]

Prints generation tokens/s without a grammar and with one (the same prompt and sampling, decoding
until max tokens), then the grammar's own work per token along the constrained output: checking
the sampled token and taking it (what most steps cost), and the full token filter over the
vocabulary from a state not seen before (what a refused sample costs, at most once per state).
"""

from __future__ import annotations

import argparse
import statistics
import time

from llmcli.api import load
from llmcli.generation import Request, SamplingParams
from llmcli.generation.grammar import GrammarMatcher, compile_grammar, schema_to_grammar

SCHEMA = {"type": "array", "maxItems": 50, "items": {
    "type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 20}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "city", "tags"]}}
PROMPT = "List fictional people as a JSON array of objects with name, age, city and tags."


def run(llm, prompt, grammar, tokens: int, seed: int):
    sched = llm.scheduler
    seq = sched.submit(Request(prompt, max_tokens=tokens, ignore_eos=True, grammar=grammar,
                               params=SamplingParams(temp=0.8, seed=seed)))
    sched.run_until(seq)
    return seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    llm = load(threads=args.threads, ctx_size=1024)
    prompt = llm.chat_prompt_ids([{"role": "user", "content": PROMPT}])
    grammar = compile_grammar(schema_to_grammar(SCHEMA))
    run(llm, prompt, grammar, 8, 0)  # compile kernels, build the vocabulary index
    speeds = {"no grammar": [], "JSON schema": []}
    outputs = []
    for r in range(args.repeats):
        for name, g in (("no grammar", None), ("JSON schema", grammar)):
            llm.reset()
            seq = run(llm, prompt, g, args.tokens, r)
            speeds[name].append(seq.timings.predicted_per_second)
            if g is not None:
                outputs.append(seq.tokens)
    for name, values in speeds.items():
        print(f"{name:12s}: {statistics.median(values):6.2f} tokens/s (median of {args.repeats}, "
              f"{args.tokens} tokens, {args.threads} thread{'s' * (args.threads > 1)})")
    base, constrained = statistics.median(speeds["no grammar"]), statistics.median(speeds["JSON schema"])
    print(f"grammar cost: {100 * (1 - constrained / base):.1f} % of generation speed")

    # the grammar's own work along one constrained output
    tokens = outputs[0]
    matcher = GrammarMatcher(grammar, llm.tokenizer, llm.tokenizer.eog_ids)
    check, walk, cached = [], [], []
    for token in tokens:
        began = time.perf_counter()
        assert matcher.allows(token)
        matcher.accept(token)
        check.append(time.perf_counter() - began)
    matcher = GrammarMatcher(grammar, llm.tokenizer, llm.tokenizer.eog_ids)
    for token in tokens:
        grammar._masks.clear()  # a state never seen: the full walk
        began = time.perf_counter()
        matcher.mask()
        walk.append(time.perf_counter() - began)
        began = time.perf_counter()
        matcher.mask()
        cached.append(time.perf_counter() - began)
        matcher.accept(token)
    ms = lambda xs: f"mean {1000 * statistics.mean(xs):.3f} ms, max {1000 * max(xs):.3f} ms"  # noqa: E731
    print(f"per token: check + accept the sampled token: {ms(check)}")
    print(f"per token: full filter over {llm.n_vocab} tokens, new state: {ms(walk)}; seen state: {ms(cached)}")


if __name__ == "__main__":
    main()
