"""`llmcli serve` refusing what it cannot do, as OpenAI error objects with llama-server's types:
bad bodies, unsupported fields, a prompt beyond the context, the API key, unknown paths, oversized
bodies, a full queue; a cancelled stream frees its slot; --timeout ends a long generation; Ctrl-C
ends in-flight streams with an error event and exits 0, releasing the port."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import openai
import pytest

from tests.serve_process import ROOT, TINY, ServerProcess, post, request

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = [{"role": "user", "content": "Hi"}]
LONG = {"prompt": "Once", "max_tokens": 3000, "ignore_eos": True, "temperature": 0}  # seconds of work


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"other-key\n{KEY}\n")
    with ServerProcess("-np", "1", "-c", "4096", "-t", "1", "--max-queue", "0", "--api-key-file", str(keys),
                       "--cors-origins", "http://app.test") as proc:
        yield proc


def _error(status_and_body, status: int, type_: str) -> dict:
    status_got, body = status_and_body
    assert status_got == status, body
    assert set(body) == {"error"} and body["error"]["type"] == type_ and body["error"]["code"] == status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_api_key(server):
    url = server.url
    assert request("GET", url + "/health")[0] == 200  # open without a key
    assert request("GET", url + "/v1/models")[0] == 200
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}]:
        status, _, body = request("POST", url + "/v1/completions", {"prompt": "x", "max_tokens": 1}, headers)
        _error((status, json.loads(body)), 401, "authentication_error")
    assert _error((request("GET", url + "/metrics")[0], json.loads(request("GET", url + "/metrics")[2])),
                  401, "authentication_error")
    assert post(url + "/v1/completions", {"prompt": "x", "max_tokens": 1}, AUTH)[0] == 200
    assert post(url + "/v1/completions", {"prompt": "x", "max_tokens": 1}, {"X-Api-Key": "other-key"})[0] == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).completions.create(
            model="m", prompt="x", max_tokens=1)
    assert openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0).completions.create(
        model="m", prompt="x", max_tokens=1).usage.completion_tokens == 1


def test_cors_origins(server):
    preflight = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, _ = request("OPTIONS", server.url + "/v1/chat/completions", headers=preflight)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://app.test"
    status, headers, _ = request("POST", server.url + "/v1/completions", {"prompt": "x"},
                                 {"Origin": "http://app.test"})  # no key: a 401 the page can read
    assert status == 401 and headers["Access-Control-Allow-Origin"] == "http://app.test"
    status, headers, _ = request("OPTIONS", server.url + "/v1/chat/completions",
                                 headers={**preflight, "Origin": "http://elsewhere.test"})
    assert status == 400 and "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize("path,body,needle", [
    ("/v1/chat/completions", b"{not json", "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2]", "must be a JSON object"),
    ("/v1/chat/completions", b"", "not valid JSON"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {}, "messages: Field required"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": "hot"}, "temperature"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": -5}, "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "'content' is required"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]},
     "messages.0: 'tool_call_id' is required"),
    ("/v1/chat/completions", {"messages": [{"role": "function", "content": "x"}]}, "use 'tool' messages"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": None}]}, "'content' is required"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
     "'tool_calls' belong to assistant messages"),
    ("/v1/chat/completions", {"messages": [CHAT[0], {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[1].tool_calls[0].function.arguments: not valid JSON"),
    ("/v1/chat/completions", {"messages": [CHAT[0], {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"arguments": "{}"}}]}]},
     "messages.1.tool_calls.0.function.name: Field required"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text only"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 2}, "'n' is not supported"),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "xml"}}, "response_format.type"),
    ("/v1/completions", {"prompt": "x", "grammar": 'root ::= "a'}, "grammar: grammar line 1"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": [{"type": "function"}]}, "tools[0].function: must be"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": [{"type": "retrieval"}]}, "tools[0].type: must be"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": [{"type": "function", "function": {"name": "a b"}}]},
     "tools[0].function.name: must be 1 to 64 letters"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": "f"}, "tools: Input should be a valid array"),
    ("/v1/chat/completions", {"messages": CHAT, "tool_choice": "required"}, "tool_choice: 'required' needs 'tools'"),
    ("/v1/chat/completions", {"messages": CHAT, "tool_choice": "sometimes", "tools": [
        {"type": "function", "function": {"name": "f"}}]}, "tool_choice: must be one of none, auto, required"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": {"type": "function", "function": {"name": "g"}}},
     "tool_choice: names the function 'g', which is not among the tools"),
    ("/v1/chat/completions", {"messages": CHAT, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ("/v1/chat/completions", {"messages": CHAT, "functions": [{"name": "f"}]}, "use 'tools'"),
    ("/v1/completions", {"prompt": "x", "tools": [{"type": "function", "function": {"name": "f"}}]},
     "tools are for /v1/chat/completions"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}],
                              "response_format": {"type": "json_object"}}, "tools cannot be combined"),
    ("/v1/chat/completions", {"messages": CHAT, "logit_bias": {"5": 1}}, "'logit_bias'"),
    ("/v1/chat/completions", {"messages": CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, "'top_logprobs' needs 'logprobs'"),
    ("/v1/chat/completions", {"messages": CHAT, "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "x", "echo": True}, "'echo' is not supported"),
    ("/v1/completions", {"prompt": "x", "best_of": 3}, "'best_of'"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "several prompts"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/completions", {"prompt": [1, 99999]}, "outside the vocabulary"),
    ("/v1/completions", {"prompt": "x", "logprobs": 99}, "logprobs"),
    ("/v1/completions", {"max_tokens": 3}, "prompt: Field required"),
    ("/v1/embeddings", {"input": "x"}, "`llmcli serve --pooling mean`"),  # the model declares no pooling
    ("/tokenize", {"text": "x"}, "content"),
    ("/detokenize", {"tokens": [5, -1]}, "outside the vocabulary"),
])
def test_bad_requests_are_400(server, path, body, needle):
    error = _error(post(server.url + path, body, AUTH), 400, "invalid_request_error")
    assert needle in error["message"]


def test_no_op_values_of_unsupported_fields_are_fine(server):
    body = {"messages": CHAT, "max_tokens": 2, "n": 1, "tools": [], "response_format": {"type": "text"},
            "logit_bias": {}, "user": "someone", "model": "anything"}
    assert post(server.url + "/v1/chat/completions", body, AUTH)[0] == 200


def test_prompt_beyond_the_context(server):
    error = _error(post(server.url + "/v1/completions", {"prompt": [5] * 4100}, AUTH), 400,
                   "exceed_context_size_error")
    assert (error["n_prompt_tokens"], error["n_ctx"]) == (4100, 4096)
    with pytest.raises(openai.BadRequestError, match="exceeds the available context size"):
        openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0).completions.create(
            model="m", prompt=[5] * 4100)


def test_unknown_path_and_method(server):
    status, _, body = request("GET", server.url + "/v1/nothing", headers=AUTH)
    _error((status, json.loads(body)), 404, "not_found_error")
    status, _, body = request("GET", server.url + "/v1/chat/completions", headers=AUTH)
    assert status == 405 and json.loads(body)["error"]["code"] == 405


def _raw_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            data.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def test_oversized_bodies_are_413(server):
    limit = 8 * 1024 * 1024
    address = tuple(server.url.split("//")[1].split(":"))
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\n".encode())
    with socket.create_connection(address) as sock:  # refused on its Content-Length, before any byte of it
        sock.sendall(head + f"Content-Length: {limit + 1}\r\n\r\n".encode())
        _error(_raw_response(sock), 413, "invalid_request_error")
    with socket.create_connection(address) as sock:  # no Content-Length: counted while it is read
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"x" * 65536
        for _ in range(limit // len(piece) + 1):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        _error(_raw_response(sock), 413, "invalid_request_error")


def _metric(server, name: str) -> float:
    text = request("GET", server.url + "/metrics", headers=AUTH)[2].decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_full_queue_is_503_and_a_cancelled_stream_frees_its_slot(server):
    conn = http.client.HTTPConnection(server.url.split("//")[1], timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({**LONG, "stream": True}),
                 {"Content-Type": "application/json", **AUTH})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")  # generating: the one slot is taken
    status, headers, body = request("POST", server.url + "/v1/completions", {"prompt": "x", "max_tokens": 1}, AUTH)
    _error((status, json.loads(body)), 503, "unavailable_error")
    assert headers["Retry-After"] == "1"
    assert _metric(server, "llmcli:requests_processing") == 1
    conn.close()  # the client goes away: its generation is cancelled at the next token
    deadline = time.monotonic() + 1.0
    while _metric(server, "llmcli:requests_processing") != 0:
        assert time.monotonic() < deadline, "the cancelled stream still holds its slot"
        time.sleep(0.02)
    assert post(server.url + "/v1/completions", {"prompt": "x", "max_tokens": 1}, AUTH)[0] == 200


def test_a_non_streaming_client_that_goes_away_is_cancelled(server):
    sock = socket.create_connection(tuple(server.url.split("//")[1].split(":")))
    body = json.dumps(LONG).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + 10
    while _metric(server, "llmcli:requests_processing") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sock.close()
    deadline = time.monotonic() + 1.0
    while _metric(server, "llmcli:requests_processing") != 0:
        assert time.monotonic() < deadline, "the abandoned request still holds its slot"
        time.sleep(0.02)


def test_timeout_and_a_clean_stop_on_sigint():
    # more tokens than a fast machine generates in the 1 s timeout (3000 took under 1 s on a Zen 4)
    longer = {**LONG, "max_tokens": 30000}
    with ServerProcess("-np", "2", "-c", "32768", "-t", "1", "--timeout", "1") as server:
        began = time.monotonic()
        status, body = post(server.url + "/v1/completions", longer)
        assert status == 200 and body["choices"][0]["finish_reason"] == "length"
        assert 0 < body["usage"]["completion_tokens"] < 30000 and time.monotonic() - began < 10

        # a stream in flight when the server is told to stop ends with an error event
        lines: list[bytes] = []
        conn = http.client.HTTPConnection(server.url.split("//")[1], timeout=30)
        conn.request("POST", "/v1/completions", json.dumps({**LONG, "stream": True}),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        lines.append(resp.readline())
        reader = threading.Thread(target=lambda: lines.extend(resp.readlines()))
        reader.start()
        assert server.stop(signal.SIGINT) == 0
        reader.join(10)
        events = [json.loads(line[6:]) for line in lines if line.startswith(b"data: {")]
        assert events[-1]["error"]["code"] == 503 and "shutting down" in events[-1]["error"]["message"]
        assert any("stopped" in line for line in server.lines)
        host, port = server.url.split("//")[1].split(":")
        with socket.socket() as sock:  # the port is free again
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))


def _serve_fails(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "llmcli", "serve", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_startup_failures_are_one_red_line(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all" * 10)
    failed = _serve_fails("-m", str(bogus), "--port", "0")
    assert failed.returncode == 1 and "error:" in failed.stderr and "bogus.gguf" in failed.stderr
    assert "Traceback" not in failed.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        failed = _serve_fails("-m", str(TINY), "--port", str(taken.getsockname()[1]))
    assert failed.returncode == 1 and "cannot listen on 127.0.0.1" in failed.stderr
    failed = _serve_fails("-m", str(TINY), "--api-key", "k", "--api-key-file", str(bogus))
    assert failed.returncode == 1 and "not both" in failed.stderr
    failed = _serve_fails("-m", str(TINY), "--pooling", "max")
    assert failed.returncode == 1 and "--pooling: pooling must be one of mean, cls, last" in failed.stderr
    failed = _serve_fails("-m", str(TINY), "--activations", "half")
    assert failed.returncode == 1 and "--activations must be one of int8-gemm, float, int8" in failed.stderr
