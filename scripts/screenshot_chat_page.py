#!/usr/bin/env python3
"""The chat page of `llmcli serve` in a real headless Chromium: type a message, wait for the
streamed reply, save a screenshot.

    python scripts/screenshot_chat_page.py [-m MODEL.gguf] [--message TEXT] [-o /work/scratch/chat-page.png]

Starts `llmcli serve` on the model (default: the tiny test llama, whose random weights reply with
noise, ~7 s in all; the page asks for no max_tokens, so a model that rambles runs to its context) on a
free port, drives http://.../ with Debian's `chromium` over the DevTools
protocol (scripts/chat_browser.py) and prints what the page showed. Needs `apt-get install -y chromium`
(a script, not a test: the README's test command must pass on a machine without a browser).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.chat_browser import chat_in_browser  # noqa: E402
from tests.serve_process import TINY, ServerProcess  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", type=Path, default=TINY)
    ap.add_argument("--message", default="Tell me a short story about a lighthouse.")
    ap.add_argument("-o", "--output", type=Path, default=Path("/work/scratch/chat-page.png"))
    ap.add_argument("--max-seconds", type=float, default=300.0, help="how long the reply may take")
    args = ap.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with ServerProcess("-t", "2", "--alias", args.model.stem, model=args.model) as server:
        began = time.perf_counter()
        state = chat_in_browser(server.url + "/", args.message, args.output, timeout=args.max_seconds)
        took = time.perf_counter() - began
    for kind, text in state["bubbles"]:
        print(f"[{kind}] {text}")
    print(f"model shown: {state['model']}; reply streamed in {len(state['partial'])} partial states seen; "
          f"{took:.1f} s in the browser; screenshot: {args.output}")
    return 0 if state["bubbles"][-1][0] == "msg assistant" and state["last"] else 1


if __name__ == "__main__":
    sys.exit(main())
