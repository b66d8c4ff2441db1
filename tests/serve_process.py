"""`llmcli serve` as a subprocess for the server tests, and raw HTTP helpers (urllib/http.client).

The server listens on a free port (--port 0) and logs the one it took; `ServerProcess` reads that
line, waits for /health, and always stops the process (SIGTERM, then SIGKILL if it hangs).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "gguf_ref" / "llama-f16.gguf"
LISTENING = re.compile(r"listening on (http://[^ ]+)")


class ServerProcess:
    def __init__(self, *args: str, model: Path = TINY):
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "llmcli", "serve", "-m", str(model), "--port", "0",
                                      *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._found = threading.Event()
        self.url = ""
        self.health_seen: list[tuple[int, dict]] = []  # /health answers until ready
        threading.Thread(target=self._read_log, daemon=True).start()
        try:
            if not self._found.wait(60) or not self.url:
                raise RuntimeError("the server did not start:\n" + "\n".join(self.lines))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            found = LISTENING.search(line)
            if found and not self.url:
                self.url = found.group(1)
                self._found.set()
        self._found.set()  # the process ended

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited:\n" + "\n".join(self.lines))
            try:
                status, _, body = request("GET", self.url + "/health")
                self.health_seen.append((status, json.loads(body)))
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server did not get ready:\n" + "\n".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def request(method: str, url: str, body: dict | bytes | None = None, headers: dict | None = None,
            timeout: float = 60) -> tuple[int, "http.client.HTTPMessage", bytes]:
    """(status, headers, body) of one request; error statuses are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                         **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def post(url: str, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict]:
    status, _, raw = request("POST", url, body, headers)
    return status, json.loads(raw)


def sse_events(url: str, body: dict, headers: dict | None = None) -> tuple[list, list[str]]:
    """A streamed request read to its end: (the data objects, every raw line)."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    conn = http.client.HTTPConnection(host_port, timeout=60)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    lines = resp.read().decode().split("\n")
    conn.close()
    events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events], lines
