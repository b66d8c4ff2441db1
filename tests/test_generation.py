"""The generation layer: continuous batching gives every sequence the tokens it gets alone.

Models: tiny llama.cpp-written GGUFs from ../shared/reference/gguf (llama f32, gemma3 f32 with its
sliding-window layers, mixtral f16 MoE, phi3 f16 fused gate|up) and the K-quant test model
quantized to Q4_K_M (8-bit activation kernels). Each sequence's tokens under batching - B = 1, 2, 3,
8, 16 sequences, prompts of different lengths, staggered arrivals, one cancelled midway - must be
exactly its tokens alone (decode rows run the same kernels whatever else is in the batch).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from llmcli.errors import BadInputError
from llmcli.generation import Engine, QueueFullError, Request, SamplingParams, Scheduler, generate_ids
from llmcli.models import load_model
from llmcli.quantize import quantize_file
from llmcli.quants.mixes import QuantizeOptions

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gguf"
KQ = Path(__file__).parent / "data" / "kq"
GREEDY = SamplingParams(temp=0.0)
MODELS = ["llama-f32", "gemma3-f32", "mixtral-f16", "phi3-f16", "kq-Q4_K_M"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    loaded = {}

    def get(name: str):
        if name not in loaded:
            if name == "kq-Q4_K_M":
                path = tmp_path_factory.mktemp("kq") / "kq-Q4_K_M.gguf"
                quantize_file(KQ / "kq-f16.gguf", path, "Q4_K_M", QuantizeOptions(), measure=False)
            else:
                path = REFERENCE / f"{name}.gguf"
            # batch_size 7: prompts cross chunk boundaries; ctx 96 holds the longest prompt + tokens
            loaded[name] = load_model(path, threads=2, ctx_size=96, batch_size=7)
        return loaded[name]

    return get


def _prompts(model, n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    n_vocab = model.hp.n_vocab
    return [rng.integers(3, n_vocab, int(rng.integers(1, 40))).tolist() for _ in range(n)]


def _request(prompt, max_tokens=12, params=GREEDY, **kw) -> Request:
    return Request(list(prompt), max_tokens=max_tokens, params=params, stop_ids=frozenset(), **kw)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n_seq", [1, 2, 3, 8, 16])
def test_batched_tokens_equal_alone(models, name, n_seq):
    model = models(name)
    prompts = _prompts(model, n_seq, seed=n_seq)
    alone = [generate_ids(model, p, 12) for p in prompts]
    sched = Scheduler(model, n_parallel=n_seq)
    seqs = [sched.submit(_request(p)) for p in prompts]
    sched.run_all()
    assert [s.tokens for s in seqs] == alone
    assert all(s.stop_reason == "length" for s in seqs)


@pytest.mark.parametrize("name", ["llama-f32", "gemma3-f32", "kq-Q4_K_M"])
def test_staggered_arrivals_and_a_cancel(models, name):
    """Requests join at different steps (more than the slots: some wait), one is cancelled midway
    and its slot goes to a waiting one at once; the others' tokens are their tokens alone."""
    model = models(name)
    prompts = _prompts(model, 7, seed=11)
    alone = [generate_ids(model, p, 10) for p in prompts]
    sched = Scheduler(model, n_parallel=3)
    seqs = []
    for step in range(200):
        if step % 3 == 0 and len(seqs) < len(prompts):
            seqs.append(sched.submit(_request(prompts[len(seqs)], max_tokens=10)))
        if step == 8:
            victim = seqs[1]
            assert not victim.done
            sched.cancel(victim)
            assert victim.stop_reason == "cancelled" and len(sched.free) >= 1
        if not sched.step() and len(seqs) == len(prompts):
            break
    assert len(seqs) == len(prompts) and all(s.done for s in seqs)
    for i, (seq, expected) in enumerate(zip(seqs, alone)):
        if i == 1:
            assert seq.tokens == expected[:len(seq.tokens)] and len(seq.tokens) < 10
        else:
            assert seq.tokens == expected, i


def test_sampled_sequences_keep_their_own_seeds(models):
    model = models("llama-f32")
    prompts = _prompts(model, 4, seed=5)
    params = [SamplingParams(temp=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=100 + i) for i in range(4)]

    def run(batch):
        sched = Scheduler(model, n_parallel=len(batch))
        seqs = [sched.submit(_request(prompts[i], params=params[i])) for i in batch]
        sched.run_all()
        return [s.tokens for s in seqs]

    alone = [run([i])[0] for i in range(4)]
    assert run([0, 1, 2, 3]) == alone
    assert len({tuple(t) for t in alone}) == 4  # the seeds do make them differ


def test_prefix_reuse_from_a_free_slot_and_from_a_running_sequence(models):
    model = models("llama-f32")
    shared, tail_a, tail_b = _prompts(model, 3, seed=3)
    shared = (shared * 3)[:30]
    sched = Scheduler(model, n_parallel=2)
    first = sched.submit(_request(shared + tail_a, max_tokens=4))
    sched.run_all()
    assert first.timings.prompt_n == len(shared + tail_a)
    # the finished sequence's slot still holds its tokens: only what differs is evaluated
    again = sched.submit(_request(shared + tail_b, max_tokens=4))
    sched.run_until(again)
    assert again.timings.prompt_n == len(tail_b)
    assert again.tokens == generate_ids(model, shared + tail_b, 4)
    # cache_prompt off: everything again
    cold = sched.submit(_request(shared + tail_b, max_tokens=4, cache_prompt=False))
    sched.run_until(cold)
    assert cold.timings.prompt_n == len(shared + tail_b) and cold.tokens == again.tokens
    # a sequence still running lends its cached prefix to a newcomer (copied into a free slot)
    sched = Scheduler(model, n_parallel=2)
    runner = sched.submit(_request(shared + tail_a, max_tokens=20))
    while runner.slot is None or runner.slot.n_past < len(shared):
        sched.step()
    newcomer = sched.submit(_request(shared + tail_b, max_tokens=4))
    sched.run_until(newcomer)
    assert newcomer.timings.prompt_n == len(tail_b)
    assert newcomer.tokens == generate_ids(model, shared + tail_b, 4)
    sched.run_all()
    assert runner.tokens == generate_ids(model, shared + tail_a, 20)


def test_decode_checks_its_batch(models):
    model = models("llama-f32")
    cache = model.new_cache(2)
    a, b = cache.slot(0, model.n_ctx), model.new_sequence()
    model.forward(a, [5, 6])
    model.forward(b, [5, 6])
    with pytest.raises(BadInputError, match="one KV cache"):
        model.decode([a, b], [1, 2])
    with pytest.raises(BadInputError, match="2 tokens for 1 sequences"):
        model.decode([a], [1, 2])


def test_queue_bound_and_bad_requests(models):
    model = models("llama-f32")
    sched = Scheduler(model, n_parallel=1, max_queue=1)
    sched.submit(_request([5, 6]))  # takes the slot at the next step
    sched.submit(_request([5, 7]))  # waits
    with pytest.raises(QueueFullError, match="queue is full"):
        sched.submit(_request([7, 8]))
    with pytest.raises(BadInputError, match="prompt is empty"):
        sched.submit(_request([]))
    with pytest.raises(BadInputError, match="context holds 96"):
        sched.submit(_request([5] * 97))
    with pytest.raises(BadInputError, match="outside the vocabulary"):
        sched.submit(_request([5, 10**6]))
    with pytest.raises(BadInputError, match="--parallel must be at least 1"):
        Scheduler(model, n_parallel=0)


def test_engine_serves_threads_and_cancels(models):
    """Requests submitted from several threads at once get their tokens alone; a cancelled one ends
    with 'cancelled' at a token boundary; the engine stays up after a failed request."""
    model = models("kq-Q4_K_M")
    prompts = _prompts(model, 6, seed=21)
    alone = [generate_ids(model, p, 8) for p in prompts]
    engine = Engine(Scheduler(model, n_parallel=3))
    results: dict[int, list[int]] = {}

    def client(i):
        tokens = [e.token for e in engine.submit(_request(prompts[i], max_tokens=8)) if e.token is not None]
        results[i] = tokens

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [results[i] for i in range(len(prompts))] == alone

    handle = engine.submit(_request(prompts[0], max_tokens=80))
    events = []
    for event in handle:
        events.append(event)
        if len(events) == 2:
            handle.cancel()
    assert events[-1].done and events[-1].stop_reason == "cancelled"
    assert sum(e.token is not None for e in events) < 80
    with pytest.raises(BadInputError):
        engine.submit(_request([]))
    again = [e.token for e in engine.submit(_request(prompts[1], max_tokens=8)) if e.token is not None]
    assert again == alone[1]
    engine.close(timeout=60)


@pytest.fixture(scope="module")
def wide_models(tmp_path_factory):
    """The models with batch_size 64: chunks of 32+ tokens run as GEMMs (in float32, where
    shorter ones run 8-bit mat-vecs on the Q4_K_M model: the arithmetic differs visibly)."""
    loaded = {}

    def get(name: str):
        if name not in loaded:
            if name == "kq-Q4_K_M":
                path = tmp_path_factory.mktemp("kq") / "kq-Q4_K_M.gguf"
                quantize_file(KQ / "kq-f16.gguf", path, "Q4_K_M", QuantizeOptions(), measure=False)
            else:
                path = REFERENCE / f"{name}.gguf"
            loaded[name] = load_model(path, threads=2, ctx_size=160, batch_size=64)
        return loaded[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_one_step_joins_decode_rows_and_chunks_each_as_alone(wide_models, name):
    """model.step: decode rows + prompt chunks of 1, 5, 33 and 40 tokens (mat-vec and GEMM
    arithmetic, some continuing a cached prefix) in one pass give every sequence the logits it
    gets alone, bit for bit."""
    model = wide_models(name)
    rng = np.random.default_rng(7)
    ids = lambda n: rng.integers(3, model.hp.n_vocab, n).tolist()  # noqa: E731
    prefixes = [ids(9), ids(3), ids(20), [], ids(12), ids(1)]
    chunks = [ids(1), ids(5), ids(40), ids(33), ids(1), ids(2)]
    wants = [True, True, False, True, True, True]
    decode_tokens = [int(t) for t in ids(2)]

    def fresh(cache):
        slots = [cache.slot(i, model.n_ctx) for i in range(8)]
        for slot, prefix in zip(slots[:6], prefixes):
            if prefix:
                model.forward(slot, prefix)
        for slot in slots[6:]:
            model.forward(slot, ids(4) if slot.index == 6 else ids(17))
        return slots

    state = rng.bit_generator.state
    joined_slots = fresh(model.new_cache(8))
    rng.bit_generator.state = state
    alone_slots = fresh(model.new_cache(8))
    decode_logits, chunk_logits = model.step(
        joined_slots[6:], decode_tokens,
        [(slot, chunk, slot.n_past, want) for slot, chunk, want in zip(joined_slots, chunks, wants)])
    for slot, chunk, want, got in zip(alone_slots, chunks, wants, chunk_logits):
        expected = model.forward(slot, chunk)
        if want:
            np.testing.assert_array_equal(got, expected)
        else:
            assert got is None
    for b, slot in enumerate(alone_slots[6:]):
        np.testing.assert_array_equal(decode_logits[b], model.decode([slot], [decode_tokens[b]])[0])
    for a, b in zip(joined_slots, alone_slots):
        assert a.n_past == b.n_past and np.array_equal(a.tokens, b.tokens)


@pytest.mark.parametrize("name", ["gemma3-f32", "kq-Q4_K_M"])
def test_batched_tokens_equal_alone_with_gemm_chunks(wide_models, name):
    """Prompts of 1-80 tokens arriving together (chunks of up to 64 joined in steps, GEMM and
    mat-vec ones) get exactly their tokens alone."""
    model = wide_models(name)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, model.hp.n_vocab, n).tolist() for n in (80, 3, 45, 1, 33, 17)]
    alone = []
    for prompt in prompts:
        sched = Scheduler(model, n_parallel=1)
        seq = sched.submit(_request(prompt, max_tokens=8))
        sched.run_until(seq)
        alone.append(seq.tokens)
    sched = Scheduler(model, n_parallel=len(prompts))
    seqs = [sched.submit(_request(p, max_tokens=8)) for p in prompts]
    sched.run_all()
    assert [s.tokens for s in seqs] == alone


def test_step_checks_its_chunks(wide_models):
    model = wide_models("llama-f32")
    cache = model.new_cache(2)
    a, b = cache.slot(0, model.n_ctx), cache.slot(1, model.n_ctx)
    with pytest.raises(BadInputError, match="distinct"):
        model.step([a], [1], [(a, [1, 2], 0, True)])
    with pytest.raises(BadInputError, match="batch size"):
        model.step([], [], [(b, list(range(3, 70)), 0, True)])
    with pytest.raises(BadInputError, match="do not fit"):
        model.step([], [], [(b, [5] * 10, model.n_ctx - 5, True)])
