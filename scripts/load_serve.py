"""Load an OpenAI-compatible server (llmcli serve, or llama-server unchanged) with streamed
completions and report what a user feels: completion tokens/s, time to first token and
inter-token latency (p50/p95), and errors.

    python scripts/load_serve.py --url http://127.0.0.1:8080 --concurrency 8 --requests 64 --max-tokens 128

Each request streams POST /v1/completions (its own prompt, `ignore_eos` so every request makes
max-tokens tokens, usage asked for in the stream). Bounded: loopback addresses only, at most
10,000 requests, and no request starts after --time-limit seconds. Standard library only, but for
`--server-pid PID`: the server process's resident memory (psutil) after the first --rss-after
requests have ended and after all of them, to see whether a long run grows it.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import socket
import statistics
import sys
import threading
import time
from urllib.parse import urlsplit

MAX_REQUESTS = 10_000
MAX_CONCURRENCY = 256


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]


def check_loopback(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"--url must be http://HOST:PORT, got {url!r}")
    port = parts.port or 80
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise SystemExit(f"{parts.hostname}: cannot resolve it ({e.strerror})") from None
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise SystemExit(f"{parts.hostname} is not a loopback address: this tool only loads local servers")
    return parts.hostname, port


def one_request(host: str, port: int, body: dict, api_key: str | None, timeout: float) -> dict:
    """Stream one completion; returns its times and token count, or its error."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    began = time.perf_counter()
    arrivals: list[float] = []
    tokens = None
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), headers)
        resp = conn.getresponse()
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}: {resp.read()[:200].decode(errors='replace')}"}
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": str(chunk["error"].get("message"))}
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                arrivals.append(time.perf_counter())
    except (OSError, ValueError, http.client.HTTPException) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        conn.close()
    if not arrivals:
        return {"error": "no text came back"}
    return {"ttft": arrivals[0] - began, "gaps": [b - a for a, b in zip(arrivals, arrivals[1:])],
            "tokens": tokens if tokens is not None else len(arrivals), "seconds": time.perf_counter() - began}


class ServerMemory:
    """Resident set size of the server process at named moments."""

    def __init__(self, pid: int):
        import psutil  # only for --server-pid

        try:
            self.process = psutil.Process(pid)
            self.process.memory_info()
        except psutil.Error as e:
            raise SystemExit(f"--server-pid {pid}: {e}") from None
        self.samples = {"start": self.process.memory_info().rss}

    def sample(self, name: str) -> None:
        self.samples[name] = self.process.memory_info().rss

    def report(self, first_n: int) -> dict:
        mb = {name: round(value / 2**20, 1) for name, value in self.samples.items()}
        out = {"rss_mb_start": mb["start"], f"rss_mb_after_{first_n}": mb.get("first"), "rss_mb_end": mb["end"]}
        if "first" in self.samples:
            out[f"rss_growth_pct_since_{first_n}"] = round(100.0 * (self.samples["end"] / self.samples["first"] - 1), 2)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt", default="Write a long story about a lighthouse keeper. Story {i}:")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--time-limit", type=float, default=600.0, help="no request starts after this many seconds")
    ap.add_argument("--server-pid", type=int, default=None,
                    help="sample this process's RSS (psutil) after the first --rss-after requests and at the end")
    ap.add_argument("--rss-after", type=int, default=100)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        ap.error(f"--requests must be in 1..{MAX_REQUESTS}")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        ap.error(f"--concurrency must be in 1..{MAX_CONCURRENCY}")
    if not 1 <= args.max_tokens <= 4096:
        ap.error("--max-tokens must be in 1..4096")
    host, port = check_loopback(args.url)
    rss = ServerMemory(args.server_pid) if args.server_pid is not None else None

    results: list[dict] = []
    lock = threading.Lock()
    next_index = iter(range(args.requests))
    started = time.perf_counter()

    def worker() -> None:
        while time.perf_counter() - started < args.time_limit:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            body = {"prompt": args.prompt.format(i=i), "max_tokens": args.max_tokens, "stream": True,
                    "temperature": args.temperature, "ignore_eos": True,
                    "stream_options": {"include_usage": True}}
            result = one_request(host, port, body, args.api_key, timeout=args.time_limit)
            with lock:
                results.append(result)
                if rss is not None and len(results) == args.rss_after:
                    rss.sample("first")

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if rss is not None:
        rss.sample("end")

    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttft = [r["ttft"] for r in ok]
    gaps = [g for r in ok for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in ok)
    report = {
        "url": args.url, "concurrency": args.concurrency, "requests": len(results), "max_tokens": args.max_tokens,
        "errors": len(errors), "seconds": round(elapsed, 3), "completion_tokens": tokens,
        "tokens_per_second": round(tokens / elapsed, 2) if elapsed else 0.0,
        "ttft_ms_p50": round(percentile(ttft, 50) * 1000, 1), "ttft_ms_p95": round(percentile(ttft, 95) * 1000, 1),
        "itl_ms_p50": round(percentile(gaps, 50) * 1000, 2), "itl_ms_p95": round(percentile(gaps, 95) * 1000, 2),
        "itl_ms_mean": round(statistics.fmean(gaps) * 1000, 2) if gaps else float("nan"),
    }
    if rss is not None:
        report.update(rss.report(args.rss_after))
    if args.json:
        print(json.dumps(report))
    else:
        for name, value in report.items():
            print(f"{name:>20}  {value}")
        for message in sorted(set(errors))[:5]:
            print(f"error: {message}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
