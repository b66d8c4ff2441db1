"""Ray: `llmcli batch --ray` (Ray Data) gives the local mode's records; the Ray Serve application
with 2 replicas answers OpenAI's client, streamed and not, and survives the death of a replica.

One local Ray cluster for the module (2 CPUs on 127.0.0.1, its files in a temp dir, stopped at the
end): starting one takes seconds. Nothing is written outside the temp dirs (no auth token or usage
stats in the home directory)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import openai
import pytest

import llmcli
from llmcli.generation.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "gguf_ref" / "llama-f16.gguf"
PROMPTS = ["Once upon a time", "The sky is", "In the beginning", "Hello", "A B C D E F G", "the the the"]


@pytest.fixture(scope="module")
def ray():
    import ray

    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    # a short path: Ray's unix sockets live under it (at most 107 bytes)
    temp = tempfile.mkdtemp(prefix="llmcli-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}})
    try:
        yield ray
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_batch_on_ray_writes_the_local_records(ray, cli, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": p, "max_tokens": 3 + 2 * i}) + "\n" for i, p in enumerate(PROMPTS))
                   + "not json\n" + json.dumps({"messages": [{"role": "user", "content": "Hi"}], "id": "c"}) + "\n",
                   encoding="utf-8")
    options = ["-m", TINY, "-c", "128", "-np", "2", "--temp", "0", "-n", "6"]
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert cli("batch", src, local, *options, "-t", "1").exit_code == 0
    res = cli("batch", src, on_ray, *options, "--ray", "--concurrency", "2", "--num-cpus", "1", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["done"] == len(PROMPTS) + 1
    drop = ("timings", "seed")  # how long each took and the unused random seeds differ; nothing else
    assert [{k: v for k, v in r.items() if k not in drop} for r in _records(on_ray)] == \
           [{k: v for k, v in r.items() if k not in drop} for r in _records(local)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replica_actors(ray) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::llmcli#")]


def _running_replicas() -> int:
    from ray import serve

    status = serve.status().applications["llmcli"].deployments["llmcli"]
    return status.replica_states.get("RUNNING", 0) if status.status == "HEALTHY" else -1


def test_serve_two_replicas_answer_openai_and_survive_a_killed_replica(ray):
    from ray import serve

    from llmcli.server import ServerConfig
    from llmcli.server.ray_serve import application

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ServerConfig(model=TINY, parallel=2, ctx_size=128, threads=1, alias="tiny")
    serve.run(application(config, replicas=2), name="llmcli", route_prefix="/")
    assert _running_replicas() == 2
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=120)
    messages = [{"role": "user", "content": "Hello there"}]
    local = llmcli.load(TINY, threads=1, ctx_size=128)
    alone = local.chat_completion(messages, max_tokens=8, params=SamplingParams(temp=0)).run()
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == alone.text and reply.usage.completion_tokens == len(alone.tokens)
    assert reply.choices[0].finish_reason == "length" and reply.model == "tiny"
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                                 stream=True))
    assert len(chunks) > 2  # streamed piece by piece through the proxy, not as one body
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == alone.text
    text = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0)
    assert text.choices[0].text == local.complete("Once upon a time", max_tokens=5,
                                                  params=SamplingParams(temp=0)).run().text

    # kill a replica while 8 requests run on the two (2 slots each, the rest queued): Ray Serve
    # 2.60's proxy does not fail the requests the dead replica was answering, they wait until the
    # client's timeout (here 60 s), and OpenAI's client then retries them (max_retries=2) on the
    # other replica; those still in Ray Serve's router go to the other replica at once. Every
    # request ends with its whole answer.
    patient = client.with_options(timeout=60)
    results: dict[int, str] = {}
    failures: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            done = patient.completions.create(model="tiny", prompt=PROMPTS[i % len(PROMPTS)], max_tokens=48,
                                              temperature=0)
            results[i] = done.choices[0].text
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            failures.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    victim = _replica_actors(ray)[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    for t in threads:
        t.join(300)
    assert not failures and len(results) == 8
    expected = {p: local.complete(p, max_tokens=48, params=SamplingParams(temp=0)).run().text for p in PROMPTS}
    assert all(results[i] == expected[PROMPTS[i % len(PROMPTS)]] for i in range(8))
    # Ray Serve replaces the dead replica: back to 2 running, the victim's name gone
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (_running_replicas() == 2 and victim not in _replica_actors(ray)):
        time.sleep(1)
    assert _running_replicas() == 2 and victim not in _replica_actors(ray)
    again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == alone.text
    serve.delete("llmcli")


def test_serve_run_builder_reads_its_arguments():
    from llmcli.errors import BadInputError
    from llmcli.server.ray_serve import build_app

    app = build_app({"model": str(TINY), "parallel": "3", "threads": "2", "autoscale": "1,4"})
    deployment = app._bound_deployment  # what `serve run` deploys: nothing runs until then
    assert deployment.name == "llmcli" and deployment.max_ongoing_requests == 6  # 3 slots + a queue of 3
    assert deployment.ray_actor_options["num_cpus"] == 2
    scaling = deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 4, 3)
    assert build_app({"model": str(TINY), "replicas": "3"})._bound_deployment.num_replicas == 3
    for args, message in (({"model": str(TINY), "colour": "red"}, "unknown argument 'colour'"),
                          ({"autoscale": "4"}, "--autoscale must be MIN,MAX"),
                          ({"autoscale": "3,2"}, "0 <= MIN <= MAX"),
                          ({"replicas": "2", "autoscale": "1,2"}, "not both"),
                          ({"replicas": "0"}, "--replicas must be at least 1")):
        with pytest.raises(BadInputError, match=message):
            build_app(args)
