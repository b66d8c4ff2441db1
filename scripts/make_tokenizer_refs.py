#!/usr/bin/env python3
"""Make the tokenizer references in tests/data/tokenizer/ with the real llama.cpp (run by hand).

1. `text100k.txt`: a 100,000-character text (built once, kept if it exists): the project's design
   docs, the reference pack's tricky strings, chat-formatted turns with special-token literals, and
   seeded pseudo-random words in several scripts, numbers, code and emoji.
2. For each model GGUF, llama.cpp's (llama-cpp-python 0.3.36 = llama.cpp 0c1e570, low-level API):
   * ids of the 100 KB text: add_special on, parse_special off and on  -> <name>.text100k.npz
   * detokenize of the reference pack's strings and of the 100 KB ids (remove_special /
     unparse_special variants) -> <name>.json
   * bos/eos/eot ids, the end-of-generation set (llama_vocab_is_eog over the vocabulary), and a
     sha256 over every token's piece (token_to_piece, special on and off) -> <name>.json
3. Every pre-tokenizer in llmcli.vocab.pretokenizers: the qwen2 test GGUF rewritten with
   `tokenizer.ggml.pre` = that name, the 100 KB text and `unicode_stress.txt` (20,000 random code
   points from every plane, white space and controls; built once) tokenized (no BOS, no special
   parsing); count and sha256 of the ids (int32 little-endian) -> pretokenizers.json.
   The stress text's ids for each model also go into <name>.json.

    /work/refvenv/bin/python scripts/make_tokenizer_refs.py \
        [--reference /work/shared/reference] [--demo ~/.cache/llmcli/gemma-3-270m-q4_k_m.gguf]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import random
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "tokenizer"
TEXT = OUT / "text100k.txt"
STRESS = OUT / "unicode_stress.txt"
N_CHARS = 100_000
TINY = ["llama", "gemma3", "phi3", "qwen2", "llama_bf16"]

WORDS = {
    "en": "the quick brown fox jumps over lazy dog model token cache kernel matrix vector "
          "memory bandwidth prompt generation sampling temperature".split(),
    "fr": "le château où naïve déjà vu garçon façon été crème brûlée".split(),
    "de": "über Größe Straße müssen Äpfel Übung schön".split(),
    "ru": "привет мир модель память токен быстро".split(),
    "zh": "中文 你好 世界 模型 内存 生成 速度".split(),
    "ja": "日本語 テキスト ひらがな カタカナ 東京".split(),
    "ko": "안녕하세요 세계 모델".split(),
    "ar": "مرحبا بالعالم نموذج".split(),
    "hi": "नमस्ते दुनिया मॉडल".split(),
    "emoji": "🙂 🎉 👍🏽 🚀 ❤️ 👨‍👩‍👧".split(),
    "code": ["def f(x):", "return x ** 2", "if (a != b && c <= d) {", "}", "x->y;", "i += 1",
             "print(f'{n:>8}')", "#include <stdio.h>", "// comment", "/* block */", "<div>", "</div>"],
    "num": ["3.14159", "1,000,000", "2024-01-01", "0x1F", "42", "1e-5", "99.9%"],
}
SEPARATORS = [" ", " ", " ", " ", "  ", "\n", "\n\n", "\t", ", ", ". ", "\r\n", "   "]
CHAT_TURNS = [
    "<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n{a}<end_of_turn>\n",
    "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n",
    "<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>",
    "<s>[INST] {q} [/INST] {a}</s>",
    "<|user|>\n{q}<|end|>\n<|assistant|>\n{a}<|end|>\n<|endoftext|>",
]


def build_text(reference: Path) -> str:
    parts = [p.read_text() for p in sorted((ROOT.parent / "shared" / "docs").glob("*.md"))]
    strings = json.loads((reference / "gguf" / "llama.llamacpp.json").read_text())["tokenizer"]["strings"]
    demo = json.loads((reference / "gemma3-270m" / "llamacpp.json").read_text())["tokenizer"]
    parts += [s["text"] for s in strings] + [s["text"] for s in demo]
    rng = random.Random(20261122)
    families = sorted(WORDS)
    while sum(map(len, parts)) < N_CHARS:
        sentence = "".join(rng.choice(WORDS[rng.choice(families)]) + rng.choice(SEPARATORS)
                           for _ in range(rng.randint(5, 40)))
        if rng.random() < 0.15:
            q, a = sentence[: len(sentence) // 2], sentence[len(sentence) // 2:]
            sentence = rng.choice(CHAT_TURNS).format(q=q, a=a)
        parts.append(sentence)
    return "\n".join(parts)[:N_CHARS]


def read_text100k() -> str:
    with open(TEXT, encoding="utf-8", newline="") as f:  # keep "\r\n" as written
        return f.read()


def build_stress_text() -> str:
    """Random code points: all planes (more from the BMP), no surrogates, plus white space."""
    rng = random.Random(151)
    spaces = [" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x85", "\xa0", "\u2003", "\u3000",
              "\u2028", "\x1c", "'s", "'LL", "\x00"]
    out = []
    while len(out) < 20_000:
        r = rng.random()
        if r < 0.15:
            out.append(rng.choice(spaces))
            continue
        hi = 0x80 if r < 0.35 else 0x3000 if r < 0.6 else 0x10000 if r < 0.8 else 0x110000
        cp = rng.randrange(0x1, hi)
        if not 0xD800 <= cp < 0xE000:
            out.append(chr(cp))
    return "".join(out)


def read_stress() -> str:
    with open(STRESS, encoding="utf-8", newline="") as f:
        return f.read()


def ids_digest(ids: list[int]) -> dict:
    return {"n_ids": len(ids), "sha256": hashlib.sha256(np.array(ids, dtype="<i4").tobytes()).hexdigest()}


class LlamaCppVocab:
    """llama.cpp's vocabulary functions through llama-cpp-python's low-level bindings."""

    def __init__(self, path: Path):
        import llama_cpp as lc

        self.lc = lc
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        params.vocab_only = True
        self.model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise SystemExit(f"{path}: llama.cpp could not load it")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        n_max = len(data) + 16
        buf = (self.lc.llama_token * n_max)()
        n = self.lc.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            raise RuntimeError("token buffer too small")
        return list(buf[:n])

    def detokenize(self, ids: list[int], remove_special: bool, unparse_special: bool) -> bytes:
        arr = (self.lc.llama_token * max(len(ids), 1))(*ids)
        size = 64 + 32 * len(ids)
        while True:
            out = ctypes.create_string_buffer(size)
            n = self.lc.llama_detokenize(self.vocab, arr, len(ids), out, size, remove_special,
                                         unparse_special)
            if n >= 0:
                return out.raw[:n]
            size = -n + 16

    def piece(self, tid: int, special: bool) -> bytes:
        out = ctypes.create_string_buffer(256)
        n = self.lc.llama_token_to_piece(self.vocab, tid, out, 256, 0, special)
        if n < 0:
            out = ctypes.create_string_buffer(-n)
            n = self.lc.llama_token_to_piece(self.vocab, tid, out, -n, 0, special)
        return out.raw[:n]

    def special_ids(self) -> dict:
        lc, v = self.lc, self.vocab
        ids = {"bos": lc.llama_vocab_bos(v), "eos": lc.llama_vocab_eos(v), "eot": lc.llama_vocab_eot(v)}
        return {k: (None if i < 0 else int(i)) for k, i in ids.items()}

    def eog_ids(self) -> list[int]:
        return [t for t in range(self.n_vocab) if self.lc.llama_vocab_is_eog(self.vocab, t)]


def pieces_sha256(vocab: LlamaCppVocab, special: bool) -> str:
    """sha256 over every token's piece, each prefixed by its 4-byte length."""
    h = hashlib.sha256()
    for tid in range(vocab.n_vocab):
        p = vocab.piece(tid, special)
        h.update(len(p).to_bytes(4, "little") + p)
    return h.hexdigest()


def survey_pretokenizers(text: str, stress: str, work: Path) -> dict:
    """llama.cpp's ids for `text` under every pre-tokenizer name we know, on the qwen2 vocabulary."""
    import sys

    sys.path.insert(0, str(ROOT))
    from llmcli.gguf import GGUFReader, GGUFWriter, MetadataValue, ValueType
    from llmcli.gguf.writer import copy_metadata
    from llmcli.vocab.pretokenizers import PRE_TOKENIZERS

    source = ROOT / "tests" / "data" / "gguf_ref" / "qwen2-f16.gguf"
    out = {}
    with GGUFReader(source) as reader:
        for name in sorted(PRE_TOKENIZERS):
            path = work / f"qwen2-pre-{name}.gguf"
            w = GGUFWriter(path, force=True)
            copy_metadata(reader.metadata, w, skip=["tokenizer.ggml.pre"])
            w.add("tokenizer.ggml.pre", MetadataValue(ValueType.STRING, name))
            w.add_tensor_infos_from(reader.tensors)
            with w.open():
                for t, data in reader.iter_tensors():
                    w.write_tensor_data(t.name, data)
            vocab = LlamaCppVocab(path)
            out[name] = {"text100k": ids_digest(vocab.tokenize(text, False, False)),
                         "unicode_stress": ids_digest(vocab.tokenize(stress, False, False))}
            path.unlink()
            print(f"pre {name}: {out[name]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=Path("/work/shared/reference"))
    ap.add_argument("--demo", type=Path,
                    default=Path.home() / ".cache" / "llmcli" / "gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--text-only", action="store_true", help="only build text100k.txt")
    ap.add_argument("--pre-only", action="store_true", help="only the pre-tokenizer survey")
    ap.add_argument("--work", type=Path, default=Path("/tmp"), help="scratch dir for GGUF variants")
    args = ap.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    if not TEXT.exists():
        TEXT.write_text(build_text(args.reference), encoding="utf-8", newline="")
    text = read_text100k()
    if not STRESS.exists():
        STRESS.write_text(build_stress_text(), encoding="utf-8", newline="")
    stress = read_stress()
    print(f"{TEXT}: {len(text)} characters, {len(text.encode())} bytes")
    if args.text_only:
        return
    survey = {
        "note": "qwen2-f16.gguf with tokenizer.ggml.pre replaced; llama.cpp tokenize(text, "
                "add_special=False, parse_special=False); sha256 of the ids as int32 little-endian",
        "llama_cpp": "llama-cpp-python 0.3.36 (llama.cpp 0c1e570)",
        "pre": survey_pretokenizers(text, stress, args.work),
    }
    (OUT / "pretokenizers.json").write_text(json.dumps(survey, indent=1) + "\n")
    if args.pre_only:
        return

    models = {name: args.reference / "gguf" / f"{name}-f16.gguf" for name in TINY}
    models["demo"] = args.demo
    for name, path in models.items():
        vocab = LlamaCppVocab(path)
        ids = {ps: vocab.tokenize(text, True, ps) for ps in (False, True)}
        dtype = np.uint16 if vocab.n_vocab <= 65536 else np.uint32
        np.savez_compressed(OUT / f"{name}.text100k.npz",
                            parse_special_off=np.array(ids[False], dtype=dtype),
                            parse_special_on=np.array(ids[True], dtype=dtype))
        if name == "demo":
            strings = [s["text"] for s in json.loads(
                (args.reference / "gemma3-270m" / "llamacpp.json").read_text())["tokenizer"]]
        else:
            strings = [s["text"] for s in json.loads(
                (args.reference / "gguf" / f"{name}.llamacpp.json").read_text())["tokenizer"]["strings"]]
        detok = []
        for s in strings:
            with_bos = vocab.tokenize(s, True, True)
            no_bos = vocab.tokenize(s, False, False)
            detok.append({
                "text": s, "ids_no_bos": no_bos, "ids_parse_special": with_bos,
                "no_bos": vocab.detokenize(no_bos, False, False).decode("utf-8", "replace"),
                "parse_special": vocab.detokenize(with_bos, False, False).decode("utf-8", "replace"),
                "parse_special_remove_special": vocab.detokenize(with_bos, True, False).decode("utf-8", "replace"),
                "parse_special_unparse": vocab.detokenize(with_bos, False, True).decode("utf-8", "replace"),
                "parse_special_remove_unparse": vocab.detokenize(with_bos, True, True).decode("utf-8", "replace"),
            })
        record = {
            "model": str(path.name),
            "llama_cpp": "llama-cpp-python 0.3.36 (llama.cpp 0c1e570), low-level vocab API",
            "n_vocab": vocab.n_vocab,
            "special_ids": vocab.special_ids(),
            "eog_ids": vocab.eog_ids(),
            "pieces_sha256": {"special": pieces_sha256(vocab, True), "plain": pieces_sha256(vocab, False)},
            "text100k": {
                "n_ids": {"parse_special_off": len(ids[False]), "parse_special_on": len(ids[True])},
                "detokenize_sha256": {
                    mode: hashlib.sha256(vocab.detokenize(ids[ps], rs, us)).hexdigest()
                    for mode, ps, rs, us in [("off_plain", False, False, False),
                                              ("on_remove_unparse", True, True, True),
                                              ("on_plain", True, False, False)]},
            },
            "unicode_stress": {ps: ids_digest(vocab.tokenize(stress, True, ps == "parse_special_on"))
                               for ps in ("parse_special_off", "parse_special_on")},
            "detokenize": detok,
        }
        (OUT / f"{name}.json").write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n")
        print(f"{name}: {vocab.n_vocab} tokens, {len(ids[False])}/{len(ids[True])} ids, "
              f"eog {record['eog_ids']}")


if __name__ == "__main__":
    main()
