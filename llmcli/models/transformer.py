"""The decoder-only transformer every supported architecture is an instance of.

Per layer (each step present only when the file holds its tensors or the spec asks for it):

    h = rms_norm(x, attn_norm)
    q, k, v = attn_q/k/v(h) (+ biases) | split(attn_qkv(h))
    q, k = rms_norm per head (attn_q_norm / attn_k_norm)              Qwen3, Gemma 3
    q, k = rope(q, k)  (norm | neox; per-layer table: global or sliding-window base)
    a = attention(q, K cache, V cache)  causal, GQA, sliding window, soft-cap, ALiBi
    o = attn_output(a) (+ bias);  o = rms_norm(o, post_attention_norm)   Gemma 2/3
    x = x + o
    h = rms_norm(x, ffn_norm)
    f = ffn_down(act(ffn_gate(h)) * ffn_up(h))       dense
      | ffn_down(act(up[:F]) * up[F:])                Phi-3 fused gate|up
      | sum_top-k w_e * expert_e(h) (+ sigmoid gate * shared expert(h))   MoE
    f = rms_norm(f, post_ffw_norm);  x = x + f
    logits = output(rms_norm(x, output_norm)), final soft-cap (Gemma 2/3)

Weights keep their GGUF names as attributes (`blk.attn_q`, `blk.ffn_down_exps`, ...), loaded by
one loop over the file's tensors. Buffers for a whole batch are allocated once at load.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..engine import ops
from ..engine.kv_cache import DEFAULT_KV_TYPE, CacheSlot, KVCache, check_head_size, kv_type
from ..engine.linear import COMPUTABLE_TYPES, Linear, float_rows, vector
from ..engine.matmul import GEMM_MIN_TOKENS, Workspace, get_threads
from ..engine.prompt_activations import DEFAULT_PROMPT_ACTIVATIONS, PROMPT_ACTIVATIONS, check_prompt_activations
from ..engine.panels import (KERNEL_ORDER_TYPES, LAYER_PANEL_ORDER, WIDE_DECODE, pack_kernel_order, pack_panels,
                             packs_layer_panels, packs_panels)
from ..engine.rope import rope_tables
from ..engine.threads import AutoThreads
from ..errors import BadInputError, FormatError, LlmcliError, UnsupportedError
from ..gguf.reader import GGUFReader
from .hparams import HParams, read_hparams
from .memory import (FFN_WIDTH_TENSORS, MemoryPlan, buffer_widths, copies_output, default_ctx, ffn_width,
                     kv_bytes_per_sequence, kv_bytes_split, kv_slots)
from .memory import check as check_memory
from .memory import plan as memory_plan
from .registry import ArchSpec, get_spec

_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)\.(weight|bias)$")

# Tensors every layer needs; others are optional and switch graph features on.
_REQUIRED_IN_BLOCK = ("attn_norm", "attn_output", "ffn_norm")


class Transformer:
    """A GGUF model ready to run: hyperparameters, weight views, KV cache and work buffers."""

    def __init__(self, reader: GGUFReader, spec: ArchSpec, ctx_size: int | None = None,
                 batch_size: int = 512, threads: int | None = None, cache_type_k: str = DEFAULT_KV_TYPE,
                 cache_type_v: str = DEFAULT_KV_TYPE, prompt_activations: str = DEFAULT_PROMPT_ACTIVATIONS):
        self.reader, self.spec = reader, spec
        check_prompt_activations(prompt_activations)  # checked first, as the cache types
        kind_k, kind_v = kv_type(cache_type_k, "--cache-type-k"), kv_type(cache_type_v, "--cache-type-v")  # checked first
        self.cache_type_k, self.cache_type_v = kind_k.name, kind_v.name
        # a block-type cache is written a row of blocks per position, and read a row per query
        # where a prompt chunk is too small for the panels of `kv_kernels.blocked`
        self.kv_blocks = kind_k.quantized or kind_v.quantized
        self.kv_kernels = ops.kv_kernels(self.cache_type_k, self.cache_type_v)  # compiled for this pair
        self.query_rounding = ops.QUERY_ROUNDING[self.cache_type_k]  # as llama.cpp's row kernel (ops)
        self.path = reader.path
        hp, _ = _hparams(reader, spec)
        self.hp: HParams = hp
        check_head_size(kind_k, hp.head_dim, "--cache-type-k")
        check_head_size(kind_v, hp.head_dim_v, "--cache-type-v")
        self.n_ctx = default_ctx(hp, ctx_size)
        if self.n_ctx <= 0:
            raise BadInputError(f"context size must be positive, got {self.n_ctx}")
        self.batch_size = max(1, int(batch_size))
        # Called as observer(w, x) with every projection's weight (a Linear) and input rows before
        # the product is computed (`llmcli imatrix` collects activation statistics this way);
        # None, the default, costs one attribute test per projection.
        self.observer = None
        if spec.embed_scale:
            hp.embed_scale = math.sqrt(hp.n_embd)
        self.set_threads(threads)
        self.workspace = Workspace()  # the GEMM's tile buffers, shared by every projection
        self._load_weights()
        self._build_rope()
        self.slopes = hp.alibi_slopes()
        self._alloc_buffers(self.batch_size)
        self.set_prompt_activations(prompt_activations)

    # -- loading -------------------------------------------------------------------------------

    def _load_weights(self) -> None:
        r, hp = self.reader, self.hp
        self.blocks = [SimpleNamespace() for _ in range(hp.n_layer)]
        biases: dict[tuple[int, str], np.ndarray] = {}
        for info in r.tensors:
            m = _BLOCK_TENSOR.match(info.name)
            if m and m.group(3) == "bias":
                biases[(int(m.group(1)), m.group(2))] = vector(r, info)
        for info in r.tensors:
            m = _BLOCK_TENSOR.match(info.name)
            if not m or m.group(3) != "weight":
                continue
            il, name = int(m.group(1)), m.group(2)
            if il >= hp.n_layer:
                raise FormatError(f"{self.path}: tensor '{info.name}' is for layer {il}, but the "
                                  f"model has {hp.n_layer} layers")
            setattr(self.blocks[il], name, self._weight(info, biases.get((il, name))))
        for il, blk in enumerate(self.blocks):
            for name in _REQUIRED_IN_BLOCK:
                if not hasattr(blk, name):
                    raise FormatError(f"{self.path}: missing tensor 'blk.{il}.{name}.weight'")
            if not hasattr(blk, "attn_qkv") and not all(hasattr(blk, n) for n in ("attn_q", "attn_k", "attn_v")):
                raise FormatError(f"{self.path}: layer {il} has neither attn_qkv nor attn_q/k/v tensors")
            ffn = ("ffn_up_exps", "ffn_down_exps") if hasattr(blk, "ffn_gate_inp") else ("ffn_up", "ffn_down")
            for name in ffn:
                if not hasattr(blk, name):
                    raise FormatError(f"{self.path}: missing tensor 'blk.{il}.{name}.weight'")

        embd = r.tensor("token_embd.weight")
        self.token_embd_type = embd.type
        self.output_norm = vector(r, r.tensor("output_norm.weight"))
        if r.has_tensor("output.weight"):
            out = r.tensor("output.weight")
        elif self.spec.tied_output:
            out = embd
        else:
            raise FormatError(f"{self.path}: missing tensor 'output.weight'")
        # The output matrix is read whole for every token and is usually the largest tensor (70 %
        # of the demo model's bytes): a copy in huge-page memory streams ~15 % faster than the map.
        # Where the type has a panel kernel the copy is the rows repacked into panels instead
        # (engine/panels.py: batched decoding's output projection ~2x faster at 8 sequences);
        # the map then serves only prompt GEMMs that ask for every row's logits.
        copy = copies_output(out.n_bytes, out.type in COMPUTABLE_TYPES)
        panels = copy and packs_panels(out.type)
        out_raw = r.tensor_copy(out) if copy and not panels else r.tensor_bytes(out)
        self.output = Linear(r, out, raw=out_raw, workspace=self.workspace)
        if panels:  # the panel kernel's own order: an output row's rounding goes no further
            pack_panels(self.output.matrix, self._releaser(out))
        self.token_embd_raw = out_raw if out is embd else r.tensor_bytes(embd)
        # A tied matrix in panels: embeddings are looked up there (the map's pages, read-ahead
        # around each looked-up row, would come back into memory: ~120 MB over a few thousand tokens).
        self.token_embd_panels = self.output.matrix.panels if panels and out is embd else None
        self._check_embedding_type(embd)
        hp.n_vocab = self.output.n_out

    def _weight(self, info, bias):
        """1-D tensors become float32 vectors, matrices Linear views, 3-D expert stacks a list of
        per-expert Linear views (expert e = rows [e * n_ff, (e + 1) * n_ff) of the raw view); each
        matrix and each expert repacked as `_repacked` says."""
        if len(info.shape) == 1:
            return vector(self.reader, info)
        if len(info.shape) == 2:
            return self._repacked(Linear(self.reader, info, bias, workspace=self.workspace), info)
        n, n_expert = info.shape[1], info.shape[2]  # rows per expert
        return [self._repacked(Linear(self.reader, info, rows=(e * n, (e + 1) * n), workspace=self.workspace,
                                      expert=e), info, e * n)
                for e in range(n_expert)]

    def _repacked(self, linear: Linear, info, first_row: int = 0) -> Linear:
        """A layer matrix, or one expert (its rows from first_row of the stack), repacked at load
        where its rows' pages can be given back (else --no-mmap / --mlock would hold both copies):
        Q4_0, IQ4_NL into panels, Q5_0, Q8_0 into panels in the rows' summation order
        (engine/panels.py), Q4_K into the mat-vec's order. Q5_0 / Q8_0 decoded tokens sum in
        float64 either way (the same bits from panels or rows). Experts as layer matrices: a MoE
        token reads 4-8 of them a layer (Qwen1.5-MoE-A2.7B-shaped Q4_K_M, 1 thread: its Q8_0 /
        Q5_0 ffn_down experts 146 -> 111 us each, its Q4_K ones ~21 GB/s in the stored order; tg
        +15-18 %, for a load of 16 s instead of 3 with every expert read up front)."""
        linear.matrix.wide_decode = packs_layer_panels(info.type) and info.type in WIDE_DECODE
        if self.reader.releases_pages:
            release = self._releaser(info, first_row)
            if packs_layer_panels(info.type):
                pack_panels(linear.matrix, release, LAYER_PANEL_ORDER[info.type])
            elif info.type in KERNEL_ORDER_TYPES:
                pack_kernel_order(linear.matrix, release)
        return linear

    def _releaser(self, info, first_row: int = 0):
        """release(first, end): give back the mapped pages of rows first_row + first .. first_row
        + end - 1 of a matrix (of the expert stack: an expert's) once repacked."""
        return lambda a, b: self.reader.release_pages(info, (first_row + a) * info.row_bytes,
                                                      (first_row + b) * info.row_bytes)

    def _check_embedding_type(self, embd) -> None:
        try:
            float_rows(self.token_embd_raw[:1], embd.type)
        except LlmcliError as e:
            raise UnsupportedError(f"{self.path}: tensor 'token_embd.weight' has type {embd.type.name}, "
                                   f"which the engine cannot read ({e})") from None

    def _rope_factors(self) -> np.ndarray | None:
        r = self.reader
        if r.has_tensor("rope_freqs.weight"):
            return vector(r, r.tensor("rope_freqs.weight"))
        # LongRoPE (Phi-3): long factors when the context exceeds the original training length.
        # llama.cpp compares its context padded to a multiple of 256, so we do too.
        padded_ctx = -(-self.n_ctx // 256) * 256
        which = "long" if padded_ctx > self.hp.rope.n_ctx_orig else "short"
        name = f"rope_factors_{which}.weight"
        return vector(r, r.tensor(name)) if r.has_tensor(name) else None

    # Positions the RoPE tables cover at first; they double as positions grow (up to n_ctx), so
    # a start-up does not compute cos/sin for a 4k-32k context it may never reach (~50 ms).
    ROPE_TABLE_START = 512

    def _build_rope(self) -> None:
        self._rope_factor_vector = self._rope_factors() if self.hp.rope_style != "none" else None
        self._rope_tables: dict[bool, tuple[np.ndarray, np.ndarray]] = {}

    def _rope_table(self, swa: bool, n_positions: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(cos, sin) for positions 0..n_positions-1 at least, of the sliding-window layers' RoPE
        or the global one; None when the model has no RoPE."""
        hp = self.hp
        if hp.rope_style == "none":
            return None
        table = self._rope_tables.get(swa)
        if table is None or len(table[0]) < n_positions:
            length = max(self.ROPE_TABLE_START, 2 * (len(table[0]) if table else 0), n_positions)
            table = rope_tables(hp.rope_swa if swa else hp.rope, min(self.n_ctx, length), self._rope_factor_vector)
            self._rope_tables[swa] = table
        return table

    def _alloc_buffers(self, n: int) -> None:
        """Flat float32 work buffers for a batch of n tokens; `_buf(name, rows, cols)` hands out
        C-contiguous (rows, cols) views of them, so kernels always see one memory layout."""
        hp = self.hp
        n_ff = max([hp.n_ff] + [self._ffn_width(b) for b in self.blocks])
        sizes = buffer_widths(hp, n_ff)
        self._flat = {name: np.zeros(n * width, np.float32) for name, width in sizes.items()}
        self._buffer_rows = n

    def _buf(self, name: str, rows: int, cols: int) -> np.ndarray:
        return self._flat[name][:rows * cols].reshape(rows, cols)

    @staticmethod
    def _ffn_width(blk) -> int:
        rows = {}
        for name in (*FFN_WIDTH_TENSORS, "ffn_up"):
            w = getattr(blk, name, None)
            if w is not None:
                rows[name] = (w[0] if isinstance(w, list) else w).n_out
        return ffn_width(rows)

    # -- running -------------------------------------------------------------------------------

    def set_threads(self, threads: int | None) -> None:
        """Threads for every kernel (numba's pool, for the calling thread). None: up to one per
        physical core, chosen layer by layer from measured speed (engine/threads.py), so a busy
        machine falls back to 1 thread where that is faster; `self.threads` is the most it uses."""
        from ..engine import matmul

        n = matmul.default_threads() if threads is None else int(threads)
        matmul.set_threads(n)
        self.threads = matmul.get_threads()
        self.thread_setting = None if threads is None else self.threads
        self._auto = AutoThreads(self.threads) if threads is None and self.threads > 1 else None

    # How prompt chunks' layer projections treat activations (engine/prompt_activations.py: the
    # modes, the default first).
    PROMPT_ACTIVATIONS = PROMPT_ACTIVATIONS
    DEFAULT_PROMPT_ACTIVATIONS = DEFAULT_PROMPT_ACTIVATIONS

    def set_prompt_activations(self, mode: str) -> None:
        """How a prompt chunk's projections (GEMM-sized: matmul.gemm_min_tokens) treat activations.
        "int8-gemm" (the default): each activation row rounded to 8 bits once per chunk and integer
        sums, llama.cpp's arithmetic, computed by the integer GEMM (kernels/gemm_int8.py) for every
        projection whose type has one, the output too; float32 GEMMs for the other types. The
        fastest mode (the demo model's pp512 ~2-3x "float"'s on an AVX512-VNNI CPU); its rows equal
        decoding's up to the order of float additions; its logits differ from "float"'s by about
        llama.cpp's own 8-bit-vs-float32 distance and sit within that distance of llama.cpp's
        native logits (tests/test_models_kq.py).
        "float": every projection a float32 GEMM (the more exact: a dequantize-then-float32
        reference to rounding error, what llama.cpp's dequant-f32 logits computed), slower.
        "int8": the 8-bit rounding of "int8-gemm" through the mat-vec kernels wherever the weight
        type has an integer kernel (row-exact: each row the bits decoding gives it; `llmcli
        imatrix`'s default, see imatrix/collect.py); the output projection stays a float32 GEMM
        (its activation rounding moves the demo model's perplexity by < 0.1 %); the slowest."""
        from ..engine.matmul import has_int8_kernel

        check_prompt_activations(mode)
        for blk in self.blocks:
            for w in vars(blk).values():
                for linear in w if isinstance(w, list) else [w]:
                    if isinstance(linear, Linear):
                        linear.row_exact = mode == "int8" and has_int8_kernel(linear.type)
                        linear.gemm = "int8" if mode == "int8-gemm" else "float"
        self.output.gemm = "int8" if mode == "int8-gemm" else "float"
        self.prompt_activations = mode

    def _kv_slots(self) -> list[int]:
        return kv_slots(self.hp, self.n_ctx, self.batch_size)

    def new_cache(self, n_seq: int = 1) -> KVCache:
        """A KV cache for n_seq sequences of n_ctx positions each (see engine.kv_cache)."""
        hp = self.hp
        if n_seq < 1:
            raise BadInputError(f"the number of sequences must be at least 1, got {n_seq}")
        return KVCache(n_seq, self._kv_slots(), hp.n_head_kv, hp.head_dim, hp.head_dim_v, self.cache_type_k,
                       self.cache_type_v)

    def kv_bytes_per_sequence(self) -> int:
        """Bytes of one sequence's KV cache (keys and values of every layer, of the cache types)."""
        return kv_bytes_per_sequence(self.hp, self.n_ctx, self.batch_size, self.cache_type_k, self.cache_type_v)

    def kv_memory(self, n_seq: int = 1) -> dict:
        """What the KV cache of n_seq sequences takes: its types, positions and bytes (keys and
        values of one sequence, and of all)."""
        bytes_k, bytes_v = kv_bytes_split(self.hp, self.n_ctx, self.batch_size, self.cache_type_k,
                                          self.cache_type_v)
        return {"type_k": self.cache_type_k, "type_v": self.cache_type_v, "n_ctx": self.n_ctx, "n_seq": n_seq,
                "bytes_k": bytes_k, "bytes_v": bytes_v, "bytes_per_sequence": bytes_k + bytes_v,
                "bytes": n_seq * (bytes_k + bytes_v)}

    def new_sequence(self) -> CacheSlot:
        """A sequence with a cache of its own (one slot): for one-off evaluations and tests."""
        return self.new_cache(1).slot(0, self.n_ctx)

    def forward(self, seq: CacheSlot, ids, pos: int | None = None, all_logits: bool = False,
                hidden: bool = False) -> np.ndarray:
        """Run `ids` of one sequence at positions pos, pos + 1, ... (default: right after what
        its cache holds).

        Returns float32 logits of the last position (n_vocab,), or of every position
        (len(ids), n_vocab) with all_logits. hidden: the last layer's hidden states after the
        final norm instead of logits (n_embd wide: what the output matrix would read; llama.cpp's
        `result_norm`, the embeddings it pools). The prompt goes through in batches of
        batch_size, so each weight block is decoded once per batch; one token runs as `decode` does.
        """
        ids = self._check_ids(ids)
        pos = seq.n_past if pos is None else int(pos)
        self._check_fits(len(ids), pos)
        self._rewind(seq, pos)
        outs = []
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start:start + self.batch_size]
            last = start + len(chunk) >= len(ids)
            # Logits of every row (all_logits), of the prompt's last row, or none (earlier batches).
            n_out = len(chunk) if all_logits else (1 if last else 0)
            part = _Part.chunk(seq, pos + start, len(chunk), n_out)
            logits = self._run_parts(chunk, [part], hidden)
            _Part.advance(seq, pos + start, chunk)
            if all_logits:
                outs.append(logits)
            elif last:
                outs.append(logits[-1])
        return np.concatenate(outs) if all_logits else outs[-1]

    def decode(self, seqs: list[CacheSlot], ids) -> np.ndarray:
        """One token for each of B sequences (all slots of one KVCache), each at its own next
        position, in one pass over the weights; returns logits (B, n_vocab). Row b equals what
        `forward(seqs[b], [ids[b]])` gives alone."""
        logits, _ = self.step(seqs, ids, [])
        return logits

    def step(self, seqs: list[CacheSlot], ids, chunks: list[tuple[CacheSlot, object, int, bool]]
             ) -> tuple[np.ndarray | None, list[np.ndarray | None]]:
        """Everything one scheduler step evaluates, in one pass over the weights: one token
        `ids[b]` for each sequence `seqs[b]` at its next position, and prompt chunks
        (slot, ids, pos, want_logits) of other sequences (each at most batch_size tokens).

        Returns the decode rows' logits (B, n_vocab) (None without decode rows) and per chunk
        the logits of its last row (None unless want_logits). want_logits may also be a count n
        (an int, not a bool): the logits of the chunk's last n rows, (n, n_vocab) (scoring a text,
        as perplexity does, needs many rows of each chunk). Every sequence's results equal what
        it gets alone (`decode` of its token, `forward` of its chunk): projections of the rows
        that mat-vec arithmetic computes alone (decode rows, chunks under the GEMM threshold) run
        as one row-exact B-row mat-vec, every longer chunk is a GEMM of its own, and norms and
        attention run per sequence as they do alone.
        """
        decode_ids = self._check_ids(ids) if len(seqs) else np.zeros(0, np.int64)
        if len(decode_ids) != len(seqs):
            raise BadInputError(f"{len(decode_ids)} tokens for {len(seqs)} sequences")
        chunk_ids = [self._check_ids(c[1]) for c in chunks]
        n_outs = [int(c[3]) for c in chunks]  # rows whose logits come back (True: 1)
        for (slot, _, pos, _), cids, n_out in zip(chunks, chunk_ids, n_outs):
            self._check_fits(len(cids), pos)
            if len(cids) > self.batch_size:
                raise BadInputError(f"a chunk of {len(cids)} tokens is longer than the batch size {self.batch_size}")
            if not 0 <= n_out <= len(cids):
                raise BadInputError(f"logits of {n_out} rows asked of a chunk of {len(cids)} tokens")
        every = list(seqs) + [c[0] for c in chunks]
        if len({id(s) for s in every}) != len(every):
            raise BadInputError("a step needs distinct sequences")
        for slot, _, pos, _ in chunks:
            self._rewind(slot, pos)
        # One-token chunks are decode rows (as `forward` runs one token); then the shorter chunks
        # first, so every mat-vec row of the step is in one run.
        one = [i for i, c in enumerate(chunk_ids) if len(c) == 1]
        longer = sorted((i for i, c in enumerate(chunk_ids) if len(c) > 1),
                        key=lambda i: len(chunk_ids[i]) >= GEMM_MIN_TOKENS)
        row_slots = list(seqs) + [chunks[i][0] for i in one]
        parts, pieces = [], []
        if row_slots:
            if any(s.n_past >= self.n_ctx for s in seqs):
                raise BadInputError(f"the context of {self.n_ctx} tokens is full (raise --ctx-size)")
            cache = row_slots[0].cache
            index = np.array([s.index for s in row_slots], np.int64)
            if any(s.cache is not cache for s in row_slots) or len(set(index.tolist())) != len(row_slots):
                raise BadInputError("a decode batch needs distinct sequences of one KV cache")
            positions = np.array([s.n_past for s in row_slots], np.int64)
            parts.append(_Part.rows(cache, index, positions))
            pieces += [decode_ids] + [chunk_ids[i] for i in one]
        for i in longer:
            slot, _, pos, _ = chunks[i]
            parts.append(_Part.chunk(slot, pos, len(chunk_ids[i]), n_outs[i]))
            pieces.append(chunk_ids[i])
        out = self._run_parts(np.concatenate(pieces), parts) if parts else None
        # Results back in the caller's order, then the caches' bookkeeping.
        results: list[np.ndarray | None] = [None] * len(chunks)
        n_rows = len(row_slots)
        decode_logits = out[:len(seqs)] if len(seqs) else None
        for k, i in enumerate(one):
            if n_outs[i]:
                results[i] = out[len(seqs) + k:len(seqs) + k + 1]
        row = n_rows
        for i in longer:
            if n_outs[i]:
                results[i] = out[row:row + n_outs[i]]
                row += n_outs[i]
        for i, (_, _, _, want) in enumerate(chunks):  # want_logits True: the last row alone
            if isinstance(want, (bool, np.bool_)) and want:
                results[i] = results[i][-1]
        for slot, token in zip(seqs, decode_ids):
            _Part.advance(slot, slot.n_past, token[None])
        for (slot, _, pos, _), cids in zip(chunks, chunk_ids):
            _Part.advance(slot, pos, cids)
        return decode_logits, results

    def _check_fits(self, n: int, pos: int) -> None:
        if pos + n > self.n_ctx:
            raise BadInputError(f"{n} tokens at position {pos} do not fit the context of "
                                f"{self.n_ctx} tokens (raise --ctx-size)")

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise BadInputError("nothing to evaluate: the token list is empty")
        bad = ids[(ids < 0) | (ids >= self.token_embd_raw.shape[0])]
        if len(bad):
            raise BadInputError(f"token id {int(bad[0])} is outside the vocabulary of "
                                f"{self.token_embd_raw.shape[0]} tokens")
        return ids

    def _rewind(self, seq: CacheSlot, pos: int) -> None:
        """Make positions < pos the cached context of seq before evaluating from pos."""
        if pos > seq.n_past:
            raise BadInputError(f"position {pos} leaves a gap: only {seq.n_past} positions are evaluated")
        if pos < seq.n_past and not self._ring_holds_window_before(seq, pos):
            # Rewound past what the sliding-window rings still hold: evaluate the kept prefix again.
            prefix = seq.history[:pos].copy()
            seq.n_past = 0
            if pos:
                self.forward(seq, prefix, 0)
        seq.n_past = pos

    def _ring_holds_window_before(self, seq: CacheSlot, pos: int) -> bool:
        """Whether every sliding-window ring still holds the window of positions before `pos`
        (positions up to n_past - 1 have been written over older ones)."""
        for swa, slots in zip(self.hp.is_swa, seq.cache.slots):
            if swa and slots < self.n_ctx:
                oldest_needed = max(0, pos - self.hp.n_swa + 1)
                if seq.n_past - 1 >= oldest_needed + slots:
                    return False
        return True

    def logits(self, ids) -> np.ndarray:
        """Full-sequence logits (len(ids), n_vocab) from an empty context (a fresh sequence)."""
        return self.forward(self.new_sequence(), ids, 0, all_logits=True)

    def hidden_states(self, ids) -> np.ndarray:
        """Final-norm hidden states of every position (len(ids), n_embd) from an empty context."""
        return self.forward(self.new_sequence(), ids, 0, all_logits=True, hidden=True)

    # -- the graph -----------------------------------------------------------------------------

    def _run_parts(self, ids: np.ndarray, parts: list["_Part"], hidden: bool = False) -> np.ndarray | None:
        """Every layer over a step's rows: `parts` in order, each `part.n` consecutive rows of
        `ids`. At the last layer every row still writes its key and value to the cache, but
        queries, attention and the FFN run on each part's last `n_out` rows only (as llama.cpp's
        output-row selection: a prompt's chunk keeps 1 row, or none). Returns the logits of
        those rows, or with `hidden` their final-norm hidden states (a copy), or None if none."""
        hp = self.hp
        n = len(ids)
        if n > self._buffer_rows:
            self._alloc_buffers(n)
        x, h = self._buf("x", n, hp.n_embd), self._buf("h", n, hp.n_embd)
        if self.token_embd_panels is not None:
            self.token_embd_panels.rows(ids, x)
        else:
            x[:] = float_rows(self.token_embd_raw[ids], self.token_embd_type)
        if hp.embed_scale != 1.0:
            x *= np.float32(hp.embed_scale)
        last_layer = len(self.blocks) - 1
        auto = self._auto
        # Layers are the unit the thread count is measured and chosen by (engine/threads.py),
        # separately for one token per sequence, small batches and GEMM batches.
        kind = (all(p.decode for p in parts), 0 if n == 1 else 1 if n < GEMM_MIN_TOKENS else 2)
        for il, blk in enumerate(self.blocks):
            if auto is not None:
                n_threads = auto.begin(kind)
                started = time.perf_counter()
            self._norm(parts, x, blk.attn_norm, h)
            keeps = [p.n_out if il == last_layer else p.n for p in parts]
            n_keep = sum(keeps)
            o = self._buf("o", n_keep, hp.n_embd)
            self._attention(il, blk, h, o, parts, keeps)
            if n_keep == 0:
                break
            if n_keep < n:
                x, h = x[_Part.last_rows(parts, keeps)], h[:n_keep]
                parts = [p.kept(keep) for p, keep in zip(parts, keeps) if keep]
            if hasattr(blk, "post_attention_norm"):
                self._norm(parts, o, blk.post_attention_norm, o)
            x += o
            self._norm(parts, x, blk.ffn_norm, h)
            self._ffn(blk, h, o, parts)
            if hasattr(blk, "post_ffw_norm"):
                self._norm(parts, o, blk.post_ffw_norm, o)
            x += o
            if auto is not None and n_keep == n:
                auto.end(kind, n_threads, time.perf_counter() - started, n)
        if auto is not None:
            auto.steady(kind)  # the output projection: at the chosen count
        if n_keep == 0:
            return None
        normed = h[:len(x)]
        self._norm(parts, x, self.output_norm, normed)
        if hidden:
            return normed.copy()
        logits = np.empty((len(x), hp.n_vocab), np.float32)
        self._project(self.output, normed, logits, parts)
        if hp.final_softcap:
            ops.softcap_(logits, hp.final_softcap)
        return logits

    def _norm(self, parts: list["_Part"], x: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
        """RMS norm of every row: decode rows in the serial order one token gets alone, a prompt
        chunk's rows with the batched kernel (both row by row, so runs of parts share a call)."""
        for start, stop, decode in _Part.runs(parts, lambda p: p.decode):
            norm = ops.rms_norm_serial if decode else ops.rms_norm
            norm(x[start:stop], weight, self.hp.rms_eps, out[start:stop])

    def _project(self, w: Linear, x: np.ndarray, out: np.ndarray, parts: list["_Part"],
                 sizes: list[int] | None = None) -> np.ndarray:
        """out = x @ w.T for rows in consecutive runs of `sizes` (default: each part's n), each with
        the arithmetic it gets alone: decode rows as one B-row mat-vec (row-exact: a row's result
        does not depend on the others; matmul.matvecs `decoding`), prompt runs under the GEMM
        threshold as another, every longer prompt run as a GEMM of its own (sharing the decoded
        weight tiles)."""
        if self.observer is not None:
            self.observer(w, x)
        if len(parts) == 1 and parts[0].decode:  # decoding: one run of decoded tokens, x's every row
            w.decode(x, out, True)
            return out
        sizes = [p.n for p in parts] if sizes is None else sizes
        groups: list[list] = []  # [(mat-vec?, decoded tokens?), first row, row bounds of its runs]
        row = 0
        for part, size in zip(parts, sizes):
            kind = (part.decode or not w.uses_gemm(size), part.decode)
            if groups and groups[-1][0] == kind:
                groups[-1][2].append(row + size)
            else:
                groups.append([kind, row, [row, row + size]])
            row += size
        for (matvec, decoding), start, bounds in groups:
            stop = bounds[-1]
            if stop == start:
                continue
            if matvec:
                w.decode(x[start:stop], out[start:stop], decoding)
            else:  # each run its own GEMM, every weight tile decoded once for all of them
                w.segments(x[start:stop], out[start:stop], [b - start for b in bounds])
        return out

    def _attention(self, il: int, blk, h: np.ndarray, out: np.ndarray, parts: list["_Part"],
                   keeps: list[int]) -> None:
        """Keys and values of every row of h into its sequence's cache; attention output of each
        part's last `keep` rows into out (sum(keeps), n_embd)."""
        hp = self.hp
        n_all = h.shape[0]
        n_q = sum(keeps)
        nq, nk = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        q = self._buf("q", n_q, nq)
        k = self._buf("k", n_all, nk)
        v = self._buf("v", n_all, hp.n_head_kv * hp.head_dim_v)
        kept = None if n_q == n_all else _Part.last_rows(parts, keeps)
        if hasattr(blk, "attn_qkv"):
            qkv = self._project(blk.attn_qkv, h, self._buf("qkv", n_all, blk.attn_qkv.n_out), parts)
            q[:] = qkv[:, :nq] if kept is None else qkv[kept, :nq]
            k[:] = qkv[:, nq:nq + nk]
            v[:] = qkv[:, nq + nk:]
        else:
            if n_q:
                self._project(blk.attn_q, h if kept is None else h[kept], q, parts, keeps)
            self._project(blk.attn_k, h, k, parts)
            self._project(blk.attn_v, h, v, parts)
        attn = self._buf("attn", n_q, hp.n_head * hp.head_dim_v)
        row = q_row = 0
        for part, keep in zip(parts, keeps):
            attend = self._attend_rows if part.decode else self._attend_chunk
            attend(il, blk, q[q_row:q_row + keep], k[row:row + part.n], v[row:row + part.n],
                   attn[q_row:q_row + keep], part)
            row, q_row = row + part.n, q_row + keep
        if n_q:
            self._project(blk.attn_output, attn, out, parts, keeps)

    def _attend_chunk(self, il: int, blk, q: np.ndarray, k: np.ndarray, v: np.ndarray, attn: np.ndarray,
                      part: "_Part") -> None:
        """A prompt chunk: its keys and values (every row, positions part.pos ...) into its
        sequence's cache; the queries of its last len(q) rows attend into attn."""
        hp = self.hp
        n_all, n = k.shape[0], q.shape[0]
        pos0 = part.pos
        k3 = k.reshape(n_all, hp.n_head_kv, hp.head_dim)
        v3 = v.reshape(n_all, hp.n_head_kv, hp.head_dim_v)
        if hasattr(blk, "attn_k_norm"):
            flat = k.reshape(n_all * hp.n_head_kv, hp.head_dim)
            ops.rms_norm(flat, blk.attn_k_norm, hp.rms_eps, flat)
        swa = hp.is_swa[il]
        table = self._rope_table(swa, pos0 + n_all)
        neox = hp.rope_style == "neox"
        if table is not None:
            ops.rope(k3, table[0], table[1], pos0, neox)
        k_cache, v_cache = part.slot.layer(il)
        if self.kv_blocks:  # stored as rows of blocks, through every sequence's arrays
            index, positions = np.full(n_all, part.slot.index), np.arange(pos0, pos0 + n_all)
            self.kv_kernels.store_rows(k3, v3, *part.slot.cache.layer(il), index, positions)
        else:
            ops.store_kv(k3, v3, k_cache, v_cache, pos0)
        if n == 0:
            return
        pos0 += n_all - n  # the kept queries are the chunk's last rows
        norm = ops.rms_norm_serial if n == 1 else ops.rms_norm
        q3 = q.reshape(n, hp.n_head, hp.head_dim)
        if hasattr(blk, "attn_q_norm"):
            flat = q.reshape(n * hp.n_head, hp.head_dim)
            norm(flat, blk.attn_q_norm, hp.rms_eps, flat)
        if table is not None:
            (ops.rope_serial if n == 1 else ops.rope)(q3, table[0], table[1], pos0, neox)
        a3 = attn.reshape(n, hp.n_head, hp.head_dim_v)
        window = hp.n_swa if swa else 0
        n_keys = pos0 + n if window <= 0 else min(pos0 + n, window)
        work = n * hp.n_head * n_keys * (hp.head_dim + hp.head_dim_v)
        blocked = n >= ops.BLOCKED_ATTENTION_MIN_QUERIES and work >= ops.PARALLEL_MIN_WORK and \
            ops.attention_blocked_fits(n, pos0, window, v_cache.shape[1], hp.head_dim_v)
        # llama.cpp's flash attention converts the queries to the keys' dot type in its row kernel:
        # for batches under FLASH_ATTN_TILE_QUERIES rows, and for any with a block-type cache. Q8_0
        # rounding is idempotent (the codes of a block's values are its codes), so the block
        # kernels that quantize the queries again get the same blocks.
        if self.kv_blocks or n_all < FLASH_ATTN_TILE_QUERIES:  # the chunk's rows (not the kept ones)
            ops.round_queries(q3, self.query_rounding)
        args = (q3, k_cache, v_cache, pos0, hp.attn_scale, hp.attn_softcap, window, self.slopes, a3)
        if blocked:  # register-blocked products: ~3x faster on a prompt (blocks dequantized once)
            self.kv_kernels.blocked(*args)
        elif self.kv_blocks:
            self.kv_kernels.attend_rows(q3, *part.slot.cache.layer(il), index[n_all - n:], positions[n_all - n:],
                                        hp.attn_scale, hp.attn_softcap, window, self.slopes, a3, get_threads())
        elif work < ops.PARALLEL_MIN_WORK:
            ops.attention_serial(*args)
        else:
            ops.attention(*args)

    def _attend_rows(self, il: int, blk, q: np.ndarray, k: np.ndarray, v: np.ndarray, attn: np.ndarray,
                     part: "_Part") -> None:
        """Decode rows: row b is one token of sequence part.index[b] at part.positions[b]; its key
        and value go to that sequence's cache and its query attends to that sequence alone."""
        hp = self.hp
        n = q.shape[0]
        index, positions = part.index, part.positions
        k3 = k.reshape(n, hp.n_head_kv, hp.head_dim)
        v3 = v.reshape(n, hp.n_head_kv, hp.head_dim_v)
        q3 = q.reshape(n, hp.n_head, hp.head_dim)
        if hasattr(blk, "attn_k_norm"):
            flat = k.reshape(n * hp.n_head_kv, hp.head_dim)
            ops.rms_norm_serial(flat, blk.attn_k_norm, hp.rms_eps, flat)
        if hasattr(blk, "attn_q_norm"):
            flat = q.reshape(n * hp.n_head, hp.head_dim)
            ops.rms_norm_serial(flat, blk.attn_q_norm, hp.rms_eps, flat)
        swa = hp.is_swa[il]
        table = self._rope_table(swa, part.n_positions)
        cos, sin = _NO_ROPE if table is None else table
        k_cache, v_cache = part.cache.layer(il)
        a3 = attn.reshape(n, hp.n_head, hp.head_dim_v)
        self.kv_kernels.decode_rows(q3, k3, v3, cos, sin, hp.rope_style == "neox", self.query_rounding, k_cache,
                                    v_cache, index, positions, hp.attn_scale, hp.attn_softcap,
                                    hp.n_swa if swa else 0, self.slopes, a3, get_threads())

    def _ffn(self, blk, h: np.ndarray, out: np.ndarray, parts: list["_Part"]) -> None:
        if hasattr(blk, "ffn_gate_inp"):  # routing is per token: each part as it runs alone
            row = 0
            for part in parts:
                self._moe(blk, h[row:row + part.n], out[row:row + part.n], part)
                row += part.n
            return
        self._dense_ffn(blk.ffn_gate if hasattr(blk, "ffn_gate") else None, blk.ffn_up,
                        blk.ffn_down, h, out, parts)

    def _dense_ffn(self, gate_w, up_w, down_w, h, out, parts: list["_Part"]) -> None:
        n = h.shape[0]
        # the parallel kernels even for one token: only prange bodies vectorise here (a plain loop
        # over one 2048-wide row took 34 us against 3-7 us)
        act = ops.ACTIVATIONS[self.spec.activation]
        if gate_w is not None:
            width = gate_w.n_out
            gate, up = self._buf("gate", n, width), self._buf("up", n, width)
            self._project(gate_w, h, gate, parts)
            self._project(up_w, h, up, parts)
        else:  # fused gate|up (Phi-3): the first half of ffn_up's rows is the gate
            width = up_w.n_out // 2
            fused = self._project(up_w, h, self._buf("fused", n, 2 * width), parts)
            gate, up = self._buf("gate", n, width), self._buf("up", n, width)
            gate[:] = fused[:, :width]
            up[:] = fused[:, width:]
        act(gate, up, gate)
        self._project(down_w, gate, out, parts)

    def _moe(self, blk, h: np.ndarray, out: np.ndarray, part: "_Part") -> None:
        """Route each token of one part to its top-k experts (softmax over all experts first)."""
        hp, n = self.hp, h.shape[0]
        n_expert = blk.ffn_gate_inp.n_out
        router = np.empty((n, n_expert), np.float32)
        self._project(blk.ffn_gate_inp, h, router, [part])
        probs = np.exp(router - router.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        k = hp.n_expert_used or n_expert
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        weights = np.take_along_axis(probs, top, axis=1)
        if self.spec.moe_norm_weights:
            weights /= np.maximum(weights.sum(axis=1, keepdims=True), 6.103515625e-5)
        if hp.expert_weights_scale not in (0.0, 1.0):
            weights *= np.float32(hp.expert_weights_scale)
        out[:] = 0.0
        # One token: its experts in one call per projection. An observer (imatrix) is shown each
        # expert's input as the loop over experts projects it.
        if n == 1 and hasattr(blk, "ffn_gate_exps") and self.observer is None:
            self._token_experts(blk, h, out, top[0], weights[0], part.decode)
        else:
            self._experts_by_rows(blk, h, out, top, weights, part)
        if hasattr(blk, "ffn_up_shexp"):
            shared = np.empty_like(out)
            self._dense_ffn(getattr(blk, "ffn_gate_shexp", None), blk.ffn_up_shexp, blk.ffn_down_shexp, h, shared,
                            [part])
            gate_inp = getattr(blk, "ffn_gate_inp_shexp", None)
            if gate_inp is not None:  # stored as a (1, n_embd) matrix, or as a vector
                g = self._project(gate_inp, h, np.empty((len(h), 1), np.float32), [part]) \
                    if isinstance(gate_inp, Linear) else (h @ gate_inp)[:, None]
                shared *= (1.0 / (1.0 + np.exp(-g))).astype(np.float32)
            out += shared

    def _token_experts(self, blk, h: np.ndarray, out: np.ndarray, experts: np.ndarray, weights: np.ndarray,
                       decoding: bool) -> None:
        """out += the weighted outputs of one token's k experts, added in ascending expert id as
        `_experts_by_rows` adds them (the same bits), each projection one call for all k experts
        (matmul.expert_matvecs: one parallel region, not one per expert; Qwen1.5-MoE-shaped
        Q4_K_M, 2 threads, a layer's four gate experts 167-210 -> 128-152 us)."""
        order = np.argsort(experts)
        ids = experts[order]
        x = np.repeat(h, len(ids), axis=0)
        width = blk.ffn_gate_exps[0].n_out
        gate, up = np.empty((len(ids), width), np.float32), np.empty((len(ids), width), np.float32)
        Linear.decode_experts([blk.ffn_gate_exps[e] for e in ids], x, gate, decoding)
        Linear.decode_experts([blk.ffn_up_exps[e] for e in ids], x, up, decoding)
        ops.ACTIVATIONS[self.spec.activation](gate, up, gate)
        down = np.empty((len(ids), out.shape[1]), np.float32)
        Linear.decode_experts([blk.ffn_down_exps[e] for e in ids], gate, down, decoding)
        for i, slot in enumerate(order):
            out[0] += weights[slot] * down[i]

    def _experts_by_rows(self, blk, h: np.ndarray, out: np.ndarray, top: np.ndarray, weights: np.ndarray,
                         part: "_Part") -> None:
        """out += each row's weighted expert outputs (top, weights (n, k)), expert by expert in
        ascending id, each over the rows that chose it."""
        gates = getattr(blk, "ffn_gate_exps", None)
        for e in np.unique(top):
            rows, slot = np.nonzero(top == e)
            xe = np.ascontiguousarray(h[rows])
            ye = np.empty((len(rows), out.shape[1]), np.float32)
            self._dense_ffn(gates[e] if gates else None, blk.ffn_up_exps[e], blk.ffn_down_exps[e], xe, ye,
                            [part.kept(len(rows))])
            out[rows] += weights[rows, slot][:, None] * ye


class _Part:
    """Consecutive rows of one pass over the layers: a prompt chunk of one sequence (`slot`) at
    positions pos, pos + 1, ..., or decode rows - one token of each of several sequences of one
    cache (`index` its slot rows), each at its own position. `n` rows now; at the last layer
    only the last `n_out` rows go on (a decode row always does)."""

    __slots__ = ("decode", "n", "n_out", "slot", "pos", "cache", "index", "positions", "n_positions")

    def __init__(self, decode: bool, n: int, n_out: int, slot=None, pos: int = 0, cache=None,
                 index=None, positions=None):
        self.decode, self.n, self.n_out = decode, n, n_out
        self.slot, self.pos, self.cache, self.index, self.positions = slot, pos, cache, index, positions
        # decode rows: the RoPE table length they need (found once a step, not once a layer)
        self.n_positions = int(positions.max()) + 1 if decode and n else 0

    @classmethod
    def chunk(cls, slot: CacheSlot, pos: int, n: int, n_out: int) -> "_Part":
        if n == 1:  # one token runs as a decode row
            return cls.rows(slot.cache, np.array([slot.index]), np.array([pos]))
        return cls(False, n, n_out, slot=slot, pos=pos)

    @classmethod
    def rows(cls, cache: KVCache, index: np.ndarray, positions: np.ndarray) -> "_Part":
        return cls(True, len(index), len(index), cache=cache, index=index, positions=positions)

    def kept(self, n: int) -> "_Part":
        """This part's last n rows (the same kind of rows: the same arithmetic)."""
        if self.decode:
            return _Part.rows(self.cache, self.index[len(self.index) - n:], self.positions[len(self.index) - n:])
        return _Part(False, n, min(n, self.n_out), slot=self.slot, pos=self.pos + self.n - n)

    @staticmethod
    def last_rows(parts: list["_Part"], keeps: list[int]) -> np.ndarray:
        """Row indices of each part's last keeps[i] rows."""
        ends = np.cumsum([p.n for p in parts])
        return np.concatenate([np.arange(end - keep, end) for end, keep in zip(ends, keeps)]).astype(np.int64)

    @staticmethod
    def runs(items, key) -> list[tuple[int, int, object]]:
        """(start, stop, key) for runs of consecutive items (of item.n rows) with the same key."""
        out, start = [], 0
        for item in items:
            k = key(item)
            if out and out[-1][2] == k:
                out[-1][1] += item.n
            else:
                out.append([start, start + item.n, k])
            start += item.n
        return [tuple(run) for run in out]

    @staticmethod
    def advance(slot: CacheSlot, pos: int, ids: np.ndarray) -> None:
        """The slot now holds ids at pos ...: record them (for prefix reuse)."""
        slot.history[pos:pos + len(ids)] = ids
        slot.n_past = pos + len(ids)


# (cos, sin) for a model without RoPE: `decode_rows` skips the rotation on a table of 0 rows.
_NO_ROPE = (np.zeros((0, 1), np.float32),) * 2

# llama.cpp's CPU flash attention (on by default) takes 64 or more query rows in float32 tiles
# (keys widened to float32); fewer rows, as in decoding, go through its row kernel, which first
# converts the queries to the keys' type.
FLASH_ATTN_TILE_QUERIES = 64


def load_model(path: str | os.PathLike, threads: int | None = None, ctx_size: int | None = None,
               batch_size: int = 512, n_seq: int = 1, use_mmap: bool = True, mlock: bool = False,
               cache_type_k: str = DEFAULT_KV_TYPE, cache_type_v: str = DEFAULT_KV_TYPE,
               prompt_activations: str = DEFAULT_PROMPT_ACTIVATIONS) -> Transformer:
    """Open a GGUF file and build the model its `general.architecture` names, after checking
    that it fits in the available memory with `n_seq` sequences (`models.memory`).
    `use_mmap=False` / `mlock=True`: llama.cpp's --no-mmap / --mlock (see GGUFReader);
    prompt_activations: see Transformer.set_prompt_activations."""
    reader = GGUFReader(Path(path), use_mmap=use_mmap, mlock=mlock)
    try:
        spec = get_spec(reader.architecture, reader.path)
        check_memory(plan_memory(reader, ctx_size, n_seq, batch_size, cache_type_k, cache_type_v), reader.path)
        return Transformer(reader, spec, ctx_size=ctx_size, batch_size=batch_size, threads=threads,
                           cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                           prompt_activations=prompt_activations)
    except BaseException:
        reader.close()
        raise


def _hparams(reader: GGUFReader, spec: ArchSpec):
    hp, meta = read_hparams(reader, spec.name, spec.rope_style)
    if spec.configure is not None:
        spec.configure(hp, meta)
    return hp, meta


def plan_memory(reader: GGUFReader, ctx_size: int | None = None, n_seq: int = 1,
                batch_size: int = 512, cache_type_k: str = DEFAULT_KV_TYPE,
                cache_type_v: str = DEFAULT_KV_TYPE) -> MemoryPlan:
    """What the model in `reader` needs to run `n_seq` sequences of `ctx_size` positions
    (default: as `Transformer` chooses), computed from its header alone."""
    hp, _ = _hparams(reader, get_spec(reader.architecture, reader.path))
    layers: dict[int, dict[str, int]] = {}
    for info in reader.tensors:
        m = _BLOCK_TENSOR.match(info.name)
        if m and m.group(3) == "weight" and len(info.shape) >= 2:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = int(info.shape[1])
    n_ff = max([hp.n_ff] + [ffn_width(rows) for rows in layers.values()])
    out = reader.tensor("output.weight" if reader.has_tensor("output.weight") else "token_embd.weight")
    output_bytes = out.n_bytes if out.type in COMPUTABLE_TYPES else 0
    return memory_plan(hp, sum(t.n_bytes for t in reader.tensors), output_bytes, n_ff,
                       default_ctx(hp, ctx_size), n_seq, max(1, int(batch_size)), cache_type_k.lower(),
                       cache_type_v.lower())
