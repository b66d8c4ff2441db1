"""Record what the reference llama.cpp says about the grammar corpus (tests/data/grammar/corpus.json)
into tests/data/grammar/llamacpp.json. Not run by the tests; rerun after changing the corpus.

    python scripts/make_grammar_refs.py --llama-src .../llama.cpp --llama-build .../build [--model DEMO.gguf]

It compiles scripts/grammar_ref_harness.cpp (our own small program) against the build's static
libraries and headers, then asks it for:
* each schema: the GBNF llama.cpp's json_schema_to_grammar writes (or its error), and for each
  document (every value compact and spaced, and the raw texts) whether that grammar accepts it,
  fed one character at a time as llama.cpp's own tests feed strings;
* each grammar: accept/reject per string (and per split into byte pieces), or for a malformed one
  the kind of parse error (classified from llama.cpp's message by ERROR_KINDS);
* token masks: over the demo model's whole vocabulary, the tokens the grammar allows after some
  prefixes (tokenized by llmcli, whose ids equal llama.cpp's);
* greedy constrained generation on the demo model: llama-server's /completion with temperature 0
  and the grammar or json_schema, from prompt token ids; then, along that path, the harness's
  per-step best allowed token and its logit lead over the second (to tell near-ties).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "grammar"
sys.path.insert(0, str(ROOT))

# llama.cpp's parse-error messages -> the kinds llmcli's GrammarError uses
ERROR_KINDS = [
    ("unexpected end of input", "unterminated"),
    ("unknown escape", "bad-escape"),
    ("hex chars", "bad-escape"),
    ("expecting name", "expected-name"),
    ("expecting ::=", "expected-definition"),
    ("expecting newline or end", "expected-newline"),
    ("expecting ')'", "unclosed-group"),
    ("expecting preceding item", "nothing-to-repeat"),
    ("expecting an int", "bad-repetition"),
    ("expecting integer", "bad-repetition"),
    ("expecting ','", "bad-repetition"),
    ("expecting '}'", "bad-repetition"),
    ("number of repetitions exceeds", "too-many-repetitions"),
    ("number of rules that are going to be repeated", "too-many-repetitions"),
    ("Undefined rule", "undefined-rule"),
    ("left recursion detected", "left-recursion"),
    ("does not contain a 'root' symbol", "missing-root"),
    ("failed to parse grammar", "empty-grammar"),  # no parse error line: the text had no rule
]

SMALL_MASK = 2000  # masks allowing at most this many tokens are stored as id lists

LIBS = ["common/libllama-common.a", "common/libllama-common-base.a", "src/libllama.a", "ggml/src/libggml.a",
        "ggml/src/libggml-cpu.a", "ggml/src/libggml-base.a"]


def compile_harness(src: Path, build: Path, out: Path) -> None:
    includes = [f"-I{src / d}" for d in ("src", "include", "common", "ggml/include")]
    cmd = ["g++", "-std=c++17", "-O1", *includes, str(ROOT / "scripts" / "grammar_ref_harness.cpp"), "-o", str(out),
           *[str(build / lib) for lib in LIBS], "-lpthread", "-fopenmp", "-ldl"]
    subprocess.run(cmd, check=True)


class Harness:
    def __init__(self, exe: Path, work: Path):
        self.exe, self.work = exe, work

    def _file(self, name: str, text: str | bytes) -> str:
        path = self.work / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return str(path)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.exe), *args], capture_output=True, check=True)

    def schema(self, schema) -> tuple[str | None, str | None]:
        out = self.run("schema", self._file("schema.json", json.dumps(schema, ensure_ascii=False))).stdout.decode()
        if out.startswith("ERROR "):
            return None, out[6:].strip()
        return out, None

    def match(self, gbnf: str, cases: list[list[bytes]]) -> tuple[list[bool] | None, str]:
        lines = "".join(" ".join(piece.hex() for piece in case) + "\n" for case in cases)
        done = self.run("match", self._file("grammar.gbnf", gbnf), self._file("cases.txt", lines))
        out = done.stdout.decode().split()
        if out and out[0] == "PARSE_ERROR":
            return None, done.stderr.decode()
        return [v == "1" for v in out], ""

    def mask(self, model: Path, gbnf: str, prefixes: list[list[int]]) -> list[list[int]]:
        lines = "".join(" ".join(map(str, p)) + "\n" for p in prefixes)
        out = self.run("mask", str(model), self._file("grammar.gbnf", gbnf), self._file("prefixes.txt", lines))
        return [[int(t) for t in line.split()] for line in out.stdout.decode().splitlines()]

    def steps(self, model: Path, gbnf: str, prompt: list[int], forced: list[int]) -> list[tuple[int, float]]:
        out = self.run("steps", str(model), self._file("grammar.gbnf", gbnf), " ".join(map(str, prompt)),
                       " ".join(map(str, forced)))
        return [(int(a), float(m)) for a, m in (line.split() for line in out.stdout.decode().splitlines())]


def error_kind(stderr: str) -> str:
    for needle, kind in ERROR_KINDS:
        if needle in stderr:
            return kind
    raise SystemExit(f"unclassified llama.cpp grammar error: {stderr!r}")


def documents(case: dict) -> list[str]:
    docs = []
    for value in case["values"]:
        for form in (json.dumps(value, ensure_ascii=False, separators=(",", ":")), json.dumps(value, ensure_ascii=False)):
            if form not in docs:
                docs.append(form)
    return docs + [t for t in case["texts"] if t not in docs]


def per_char(text: str) -> list[bytes]:
    return [c.encode("utf-8") for c in text]


def record_schemas(harness: Harness, corpus: dict) -> list[dict]:
    out = []
    for case in corpus["schemas"]:
        gbnf, error = harness.schema(case["schema"])
        entry = {k: case[k] for k in ("name", "schema") if k in case}
        entry.update({k: case[k] for k in ("refused", "error") if k in case})
        entry["llamacpp_gbnf"], entry["llamacpp_error"] = gbnf, error
        docs = documents(case)
        if gbnf is not None and docs:
            verdicts, err = harness.match(gbnf, [per_char(d) for d in docs])
            assert verdicts is not None, err
            entry["docs"] = [{"text": d, "accepted": v} for d, v in zip(docs, verdicts)]
        else:
            entry["docs"] = []
        out.append(entry)
        print(f"schema {case['name']}: {'error' if error else sum(d['accepted'] for d in entry['docs'])} "
              f"/ {len(entry['docs'])}", flush=True)
    return out


def resolve_gbnf(harness: Harness, case: dict) -> str:
    if "schema" in case:
        gbnf, error = harness.schema(case["schema"])
        assert error is None, error
        return gbnf
    if case["gbnf"] == "@JSON_OBJECT":
        return harness.schema({"type": "object"})[0]
    return case["gbnf"]


def record_grammars(harness: Harness, corpus: dict) -> tuple[list, list, list]:
    grammars = []
    for case in corpus["grammars"]:
        gbnf = resolve_gbnf(harness, case)
        verdicts, err = harness.match(gbnf, [per_char(s) for s in case["strings"]])
        assert verdicts is not None, (case["name"], err)
        grammars.append({"name": case["name"], "gbnf": case["gbnf"], "strings": [
            {"text": s, "accepted": v} for s, v in zip(case["strings"], verdicts)]})
    splits = []
    for case in corpus["split_strings"]:
        cases = [[bytes.fromhex(p) for p in pieces] for pieces in case["pieces"]]
        verdicts, err = harness.match(case["gbnf"], cases)
        assert verdicts is not None, err
        splits.append({"name": case["name"], "gbnf": case["gbnf"], "cases": [
            {"pieces": pieces, "accepted": v} for pieces, v in zip(case["pieces"], verdicts)]})
    bad = []
    for case in corpus["bad_grammars"]:
        verdicts, stderr = harness.match(case["gbnf"], [])
        assert verdicts is None, f"{case['name']}: llama.cpp accepts it"
        bad.append({"name": case["name"], "gbnf": case["gbnf"], "kind": error_kind(stderr),
                    "llamacpp_message": stderr.strip().splitlines()[0]})
    return grammars, splits, bad


def record_masks(harness: Harness, corpus: dict, model: Path, tokenizer) -> list[dict]:
    out = []
    n_vocab = tokenizer.n_vocab
    for case in corpus["masks"]:
        gbnf = resolve_gbnf(harness, case)
        prefixes = []
        for text in case["prefixes"]:
            ids = tokenizer.tokenize(text, add_special=False) if text else []
            assert tokenizer.detokenize(ids) == text, (text, ids)
            prefixes.append(ids)
        allowed = harness.mask(model, gbnf, prefixes)
        states = []
        for text, ids, ok in zip(case["prefixes"], prefixes, allowed):
            state = {"prefix": text, "prefix_ids": ids, "n_allowed": len(ok)}
            if len(ok) <= SMALL_MASK:
                state["allowed"] = ok
            else:  # one bit per token, packed (numpy's packbits order), zlib, base64
                bits = np.zeros(n_vocab, np.uint8)
                bits[ok] = 1
                state["mask_zlib_b64"] = base64.b64encode(zlib.compress(np.packbits(bits).tobytes(), 9)).decode()
            states.append(state)
        out.append({"name": case["name"], **{k: case[k] for k in ("gbnf", "schema") if k in case}, "states": states})
        print(f"mask {case['name']}: {[s['n_allowed'] for s in states]}", flush=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_greedy(harness: Harness, corpus: dict, model: Path, server_exe: Path, llm) -> list[dict]:
    port = free_port()
    server = subprocess.Popen([str(server_exe), "-m", str(model), "-t", "2", "-c", "2048", "-np", "1",
                               "--host", "127.0.0.1", "--port", str(port), "--no-webui"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        out = []
        for case in corpus["greedy"]:
            if "chat" in case:
                prompt = llm.chat_prompt_ids([{"role": "user", "content": case["chat"]}])
            else:
                prompt = llm.tokenize(case["text"], add_special=True)
            body = {"prompt": prompt, "n_predict": 96, "temperature": 0, "cache_prompt": False,
                    "return_tokens": True, "seed": 0}
            if "schema" in case:
                body["json_schema"] = case["schema"]
                gbnf = resolve_gbnf(harness, case)
            else:
                body["grammar"] = case["gbnf"]
                gbnf = case["gbnf"]
            request = urllib.request.Request(url + "/completion", json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as r:
                answer = json.loads(r.read())
            tokens = answer["tokens"]
            ended_with_eog = bool(tokens) and llm.tokenizer.is_eog(tokens[-1])
            if ended_with_eog:  # the end-of-generation token is not part of the output
                tokens = tokens[:-1]
            steps = harness.steps(model, gbnf, prompt, tokens)
            out.append({**{k: case[k] for k in ("name", "gbnf", "schema", "chat", "text") if k in case},
                        "prompt_ids": prompt, "llamacpp_ids": tokens, "llamacpp_text": answer["content"],
                        "stop_type": answer.get("stop_type"), "ended_with_eog": ended_with_eog, "n_predict": 96,
                        "steps": [{"best": b, "margin": m if m != float("inf") else None} for b, m in steps]})
            agree = all(b == t for (b, _), t in zip(steps, tokens))
            print(f"greedy {case['name']}: {len(tokens)} tokens, {answer.get('stop_type')}, "
                  f"harness agrees: {agree}: {answer['content']!r}", flush=True)
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama-src", type=Path, required=True, help="llama.cpp source tree (commit 0c1e570)")
    parser.add_argument("--llama-build", type=Path, required=True, help="its CMake build directory (static libs)")
    parser.add_argument("--model", type=Path, default=None, help="the demo GGUF (default: llmcli's demo model)")
    parser.add_argument("--skip-greedy", action="store_true", help="leave the greedy runs as they are")
    args = parser.parse_args()

    from llmcli.api import load
    from llmcli.demo import demo_model_path

    model = args.model or demo_model_path()
    corpus = json.loads((DATA / "corpus.json").read_text(encoding="utf-8"))
    work = Path(tempfile.mkdtemp(prefix="grammar_refs_"))
    try:
        exe = work / "harness"
        compile_harness(args.llama_src, args.llama_build, exe)
        harness = Harness(exe, work)
        llm = load(model, threads=2)
        result = {"about": "llama.cpp 0c1e570's answers for tests/data/grammar/corpus.json, recorded by "
                           "scripts/make_grammar_refs.py with scripts/grammar_ref_harness.cpp",
                  "model_file": model.name, "n_vocab": llm.n_vocab}
        result["schemas"] = record_schemas(harness, corpus)
        result["grammars"], result["split_strings"], result["bad_grammars"] = record_grammars(harness, corpus)
        result["masks"] = record_masks(harness, corpus, model, llm.tokenizer)
        previous = DATA / "llamacpp.json"
        if args.skip_greedy:
            result["greedy"] = json.loads(previous.read_text(encoding="utf-8"))["greedy"]
        else:
            result["greedy"] = record_greedy(harness, corpus, model, args.llama_build / "bin" / "llama-server", llm)
        previous.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {previous}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
