"""The chat page at GET / in a real headless Chromium (Debian's `chromium`, required: a missing
browser fails this test): type a message, press Enter, see the reply stream in (tests/browser.py)."""

from __future__ import annotations

from tests.browser import chat_in_browser
from tests.serve_process import ServerProcess


def test_chat_page_streams_a_reply_in_chromium(tmp_path):
    with ServerProcess("-t", "1", "-c", "512", "--alias", "tiny-llama") as server:  # replies of ~490 tokens
        shot = tmp_path / "chat.png"
        state = chat_in_browser(server.url + "/", "Tell me a story", shot)
        assert any("POST /v1/chat/completions 200" in line for line in server.lines)
    assert state["model"] == "tiny-llama"  # the page read /v1/models
    (user_kind, user_text), (reply_kind, reply_text) = state["bubbles"]
    assert (user_kind, user_text) == ("msg user", "Tell me a story")
    assert reply_kind == "msg assistant" and reply_text.strip()  # a reply, not an error bubble
    # seen while it streamed: the reply grew over several polls before it ended
    assert len(set(state["partial"])) >= 2 and max(state["partial"]) <= len(reply_text)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 5000
