#!/usr/bin/env python3
"""Render the tiny models' chat templates with Hugging Face transformers, as test references.

Run in a scratch virtualenv that has transformers (never needed by llmcli or its tests):

    /path/to/venv-with-transformers/bin/python scripts/make_chat_references.py

Writes tests/data/chat_ref.json: per model and conversation, `apply_chat_template(tokenize=False)`
with and without the generation prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["llama", "llama_bf16", "mistral", "qwen2", "gemma3", "phi3"]
CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is the capital of France?"}],
    "multi": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "  Tell me a joke about ünïcödé 🙂  "},
    ],
    "system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
    ],
}


def main() -> None:
    out = {"conversations": CONVERSATIONS, "renders": {}}
    for name in MODELS:
        tok = AutoTokenizer.from_pretrained(ROOT / "tests" / "data" / "hf" / name)
        renders = {}
        for conv_name, conv in CONVERSATIONS.items():
            for gen in (True, False):
                key = f"{conv_name}/{'gen' if gen else 'nogen'}"
                try:
                    renders[key] = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
                except Exception as e:  # the template itself refuses (e.g. no system role)
                    renders[key] = {"error": f"{type(e).__name__}: {e}"}
        out["renders"][name] = {"bos_token": tok.bos_token or "", "eos_token": tok.eos_token or "",
                                "template": (ROOT / "tests/data/hf" / name / "chat_template.jinja").read_text(),
                                "renders": renders}
    (ROOT / "tests" / "data" / "chat_ref.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))
    print("wrote tests/data/chat_ref.json")


if __name__ == "__main__":
    main()
