"""Chat templates render exactly as Hugging Face transformers renders them (tests/data/chat_ref.json,
made by scripts/make_chat_references.py), in a sandbox, with built-in fallbacks."""

from __future__ import annotations

import json

import pytest

from llmcli.engine.chat import ChatTemplate
from llmcli.errors import BadInputError


def _reference(data_dir):
    return json.loads((data_dir / "chat_ref.json").read_text())


def test_renders_match_transformers(data_dir):
    ref = _reference(data_dir)
    checked = 0
    for model, entry in ref["renders"].items():
        template = ChatTemplate.for_model(entry["template"], entry["bos_token"], entry["eos_token"])
        for key, expected in entry["renders"].items():
            conv_name, gen = key.split("/")
            conversation = ref["conversations"][conv_name]
            if isinstance(expected, dict):
                with pytest.raises(BadInputError):
                    template.render(conversation, add_generation_prompt=gen == "gen")
            else:
                assert template.render(conversation, add_generation_prompt=gen == "gen") == expected, (model, key)
            checked += 1
    assert checked == 36


def test_fallback_follows_the_vocabulary():
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    gemma = ChatTemplate.for_model(None, "<bos>", "<eos>", {"<start_of_turn>", "<end_of_turn>"})
    assert gemma.origin == "built-in gemma"
    assert gemma.render(conversation) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n")
    chatml = ChatTemplate.for_model(None, "", "", {"hello"})
    assert chatml.origin == "built-in chatml"
    assert chatml.render(conversation).endswith("<|im_start|>assistant\n")


def test_broken_templates_give_one_line_errors():
    with pytest.raises(BadInputError, match="does not parse"):
        ChatTemplate.for_model("{% for x in %}")
    refusing = ChatTemplate.for_model("{{ raise_exception('no system role') }}")
    with pytest.raises(BadInputError, match="no system role"):
        refusing.render([{"role": "user", "content": "x"}])
    failing = ChatTemplate.for_model("{{ messages[5]['content'] + 1 }}")
    with pytest.raises(BadInputError, match="failed to render"):
        failing.render([{"role": "user", "content": "x"}])
    with pytest.raises(BadInputError, match="role"):
        ChatTemplate.for_model(None).render([{"role": "wizard", "content": "x"}])


def test_sandbox_blocks_attribute_escapes():
    sneaky = ChatTemplate.for_model("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(BadInputError):
        sneaky.render([{"role": "user", "content": "x"}])
