"""POST /v1/embeddings against llama.cpp's llama-embedding (tests/data/embedding): the tiny llama
served with --pooling mean, and a tiny Qwen3 GGUF that declares LAST pooling served as it is.
Vectors are L2-normalised as llama-server's; the measured distance to llama-embedding's is 2.7e-4
at most (see test_embeddings.py), bounded here by 6e-4. (Without a pooling type and --pooling:
a 400, in test_serve_errors.py.)"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

from llmcli.generation.pooling import l2_normalize
from tests.conftest import DATA
from tests.serve_process import ServerProcess, post

QWEN3_EMBED = DATA / "embedding" / "qwen3-embed-f16.gguf"
TOLERANCE = 6e-4


def _ref(name: str) -> tuple[dict, np.ndarray]:
    ref = json.loads((DATA / "embedding" / f"{name}.json").read_text())
    return ref, np.stack([l2_normalize(np.array(e, np.float32)) for e in ref["embeddings"]])


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--pooling", "mean", "-np", "2", "-c", "512", "-t", "1", "--alias", "tiny") as proc:
        yield proc


def _vectors(body: dict) -> np.ndarray:
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    assert all(d["object"] == "embedding" for d in body["data"])
    return np.array([d["embedding"] for d in body["data"]], np.float32)


def test_every_input_shape_equals_llama_embedding(server):
    ref, expected = _ref("llama-f16.mean")
    url = server.url + "/v1/embeddings"
    status, body = post(url, {"input": ref["prompts"], "model": "tiny"})
    assert status == 200, body
    assert np.abs(_vectors(body) - expected).max() < TOLERANCE
    n_tokens = sum(len(ids) for ids in ref["ids"])
    assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens} and body["model"] == "tiny"
    by_ids = _vectors(post(url, {"input": ref["ids"]})[1])
    assert np.array_equal(by_ids, _vectors(body))
    one_text = post(url, {"input": ref["prompts"][1]})[1]
    assert len(one_text["data"]) == 1 and np.array_equal(_vectors(one_text)[0], _vectors(body)[1])
    one_ids = post(url, {"input": ref["ids"][1]})[1]  # a flat list of ids is one input
    assert np.array_equal(_vectors(one_ids)[0], _vectors(body)[1])
    assert one_ids["usage"]["prompt_tokens"] == len(ref["ids"][1])


def test_base64_and_the_openai_client(server):
    ref, expected = _ref("llama-f16.mean")
    as_floats = _vectors(post(server.url + "/v1/embeddings", {"input": ref["prompts"]})[1])
    body = post(server.url + "/v1/embeddings", {"input": ref["prompts"], "encoding_format": "base64"})[1]
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]])
    assert np.array_equal(decoded, as_floats)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    for fmt in (openai.NOT_GIVEN, "float"):  # not given: the client asks for base64 and decodes it
        done = client.embeddings.create(model="tiny", input=ref["prompts"], encoding_format=fmt)
        got = np.array([d.embedding for d in done.data], np.float32)
        assert np.array_equal(got, as_floats) and done.usage.prompt_tokens == sum(map(len, ref["ids"]))
    done = client.embeddings.create(model="tiny", input=ref["prompts"][0], dimensions=64)
    assert np.abs(np.array(done.data[0].embedding) - expected[0]).max() < TOLERANCE


def test_concurrent_requests_equal_their_sequential_results(server):
    ref, _ = _ref("llama-f16.mean")
    url = server.url + "/v1/embeddings"
    alone = [_vectors(post(url, {"input": p})[1]) for p in ref["prompts"]]
    completion = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}
    with ThreadPoolExecutor(6) as pool:
        generating = [pool.submit(post, server.url + "/v1/completions", completion) for _ in range(2)]
        together = list(pool.map(lambda p: _vectors(post(url, {"input": p})[1]), ref["prompts"]))
        texts = [f.result()[1]["choices"][0]["text"] for f in generating]
    assert all(np.abs(a - b).max() < 1e-5 for a, b in zip(alone, together))
    assert texts[0] == texts[1] == post(server.url + "/v1/completions", completion)[1]["choices"][0]["text"]


@pytest.mark.parametrize("body, needle", [
    ({}, "input: Field required"),
    ({"input": []}, "the input list is empty"),
    ({"input": [1.5]}, "input item 0"),
    ({"input": [True, False]}, "input item 0"),
    ({"input": ["ok", [1, 2], []]}, "input item 2"),
    ({"input": 7}, "must be a string"),
    ({"input": [[1, 99999]]}, "outside the vocabulary"),
    ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "x", "dimensions": 32}, "'dimensions' must be the model's embedding size (64)"),
    ({"input": ["x"] * 2049}, "at most 2048 inputs"),
])
def test_bad_requests(server, body, needle):
    status, got = post(server.url + "/v1/embeddings", body)
    assert status == 400 and got["error"]["type"] == "invalid_request_error", got
    assert needle in got["error"]["message"]


def test_input_beyond_the_context(server):
    status, got = post(server.url + "/v1/embeddings", {"input": ["fine", [5] * 600]})
    assert status == 400 and got["error"]["type"] == "exceed_context_size_error"
    assert (got["error"]["n_prompt_tokens"], got["error"]["n_ctx"]) == (600, 512)
    assert post(server.url + "/v1/embeddings", {"input": "still serving"})[0] == 200


def test_a_model_that_declares_last_pooling():
    ref, expected = _ref("qwen3-embed-f16.last")
    with ServerProcess("-np", "2", "-c", "512", "-t", "1", model=QWEN3_EMBED) as proc:
        status, body = post(proc.url + "/v1/embeddings", {"input": ref["prompts"]})
        assert status == 200, body
        assert np.abs(_vectors(body) - expected).max() < TOLERANCE
        assert body["usage"]["prompt_tokens"] == sum(map(len, ref["ids"]))  # EOS added as the file asks
        assert body["model"] == "qwen3-embed-f16.gguf"
