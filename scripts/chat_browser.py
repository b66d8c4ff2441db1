"""Drive the chat page of `llmcli serve` in a real headless Chromium (Debian's `chromium`).

The browser is spoken to over the Chrome DevTools Protocol on a pipe (`--remote-debugging-pipe`:
it reads NUL-terminated JSON commands on its fd 3 and writes responses and events on fd 4), so no
port, websocket library or playwright is needed. Used by scripts/screenshot_chat_page.py.

    with Chromium() as browser:
        page = browser.new_page()
        page.navigate(url)
        page.evaluate("document.title")
        png = page.screenshot()
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-pipe", "--window-size=1000,700", "--hide-scrollbars"]


class BrowserError(RuntimeError):
    pass


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise BrowserError("chromium is not installed (Debian: apt-get install -y chromium)")
    return path


class Chromium:
    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = tempfile.TemporaryDirectory(prefix="llmcli-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def as_fds_3_and_4() -> None:  # in the child: our pipe ends become its fd 3 (read) and 4 (write)
            r, w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen([chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={self.profile.name}",
                                      "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     close_fds=False, preexec_fn=as_fds_3_and_4)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict] = []

    # -- the protocol --------------------------------------------------------------------------

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """One command; its result (events that arrive meanwhile are kept in self.events)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                data = os.read(self._from_browser, 1 << 20)
                if not data:
                    raise BrowserError("chromium exited:\n" + self._stderr())
                self._buffer += data
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _stderr(self) -> str:
        try:
            return self.proc.communicate(timeout=5)[1].decode(errors="replace")[-2000:]
        except subprocess.TimeoutExpired:
            return ""

    def new_page(self) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.send("Page.enable")
        page.send("Runtime.enable")
        return page

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("Browser.close")
            except (BrowserError, OSError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self.profile.cleanup()

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (awaited if it is a promise)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, every: float = 0.05):
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"waited {timeout:g} s for: {expression}")
            time.sleep(every)

    def type_text(self, text: str) -> None:
        """Text into the focused element, as typed (input events)."""
        self.send("Input.insertText", {"text": text})

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                 "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13,
                                                 **({"text": "\r"} if kind == "keyDown" else {})})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])


# What the chat page shows: the model name, its bubbles (class, text), whether a reply is streaming.
PAGE_STATE = """(() => {
  const bubbles = [...document.querySelectorAll('#log .msg')].map(d => [d.className, d.textContent]);
  return {model: document.getElementById('model').textContent, sending: document.getElementById('send').textContent === 'Stop',
          bubbles: bubbles, last: bubbles.length ? bubbles[bubbles.length - 1][1] : ''};
})()"""


def chat_in_browser(url: str, message: str, screenshot: str | os.PathLike | None = None,
                    timeout: float = 120.0) -> dict:
    """Open the chat page at url, type `message`, press Enter and wait for the streamed reply to
    end; returns the page's state then (PAGE_STATE) plus `partial`: the reply's lengths seen while
    it was still streaming. Saves a PNG screenshot of the page if asked."""
    with Chromium() as browser:
        page = browser.new_page()
        page.navigate(url)
        page.wait_for("document.getElementById('model').textContent !== '…'")
        page.evaluate("document.getElementById('input').focus()")
        page.type_text(message)
        page.press_enter()
        partial: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            state = page.evaluate(PAGE_STATE)
            if len(state["bubbles"]) >= 2 and not state["sending"]:
                break
            if state["sending"] and state["last"] and len(state["bubbles"]) == 2:
                partial.append(len(state["last"]))
            if time.monotonic() > deadline:
                raise BrowserError(f"no whole reply within {timeout:g} s: {state}")
            time.sleep(0.02)
        if screenshot is not None:
            with open(screenshot, "wb") as f:
                f.write(page.screenshot())
        state["partial"] = partial
        return state
