"""general.* naming and size labels: our reimplementation against gguf-py's (the library llama.cpp's
converter uses; the installed gguf package is used here only as an oracle)."""

from __future__ import annotations

import pytest
from gguf.metadata import Metadata
from gguf.utility import size_label as gguf_size_label

from llmcli.convert.metadata import id_to_title, model_id_components, size_label

MODEL_IDS = [
    "llama", "llama_bf16", "hf", "Mistral-7B-Instruct-v0.2", "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen2.5-0.5B-Instruct", "gemma-3-270m-it", "Phi-3-mini-4k-instruct", "Mixtral-8x7B-Instruct-v0.1",
    "bloom-7b1", "TinyLlama-1.1B-Chat-v1.0", "SmolLM2-135M", "Llama-2-7b-chat-hf", "gpt2", "model-q4_k-bf16",
    "Phi-3-mini-128k-instruct", "my model with spaces", "./relative", "org/name-v1.2.3-lora", "x-small-large",
    "deepseek-llm-67b-chat", "c4ai-command-r-v01",
]


@pytest.mark.parametrize("total_params", [0, 202_048, 7_241_732_096, -50_000])
@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_model_id_components_match_gguf_py(model_id, total_params):
    name, org, basename, finetune, version, label = Metadata.get_model_id_components(model_id, total_params)
    ours = model_id_components(model_id, total_params)
    assert (ours["name"], ours["organization"], ours["basename"], ours["finetune"], ours["version"],
            ours["size_label"]) == (name, org, basename, finetune, version, label)


@pytest.mark.parametrize("text", ["llama", "llama_bf16", "mistral-7b-instruct-v0.2", "Qwen2.5-0.5B", "gpt2", "x-1b"])
def test_title_matches_gguf_py(text):
    assert id_to_title(text) == Metadata.id_to_title(text)


@pytest.mark.parametrize("counts", [(202_048, 202_048, 0, 0), (999, 999, 0, 0), (1_000_001, 1_000_001, 0, 0),
                                    (7_241_732_096, 7_241_732_096, 0, 0), (46_702_792_704, 1_600_000_000, 5_637_000_000, 8),
                                    (1_234_567_890_123, 1, 0, 0), (531_200, 58_000, 145_000, 4)])
def test_size_label_matches_gguf_py(counts):
    assert size_label(*counts) == gguf_size_label(*counts)
