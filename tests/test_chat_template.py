"""Chat templates render exactly as Hugging Face transformers renders them (tests/data/chat_ref.json,
made by scripts/make_chat_references.py), in a sandbox, with built-in fallbacks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llmcli.generation.chat import ChatTemplate
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


# ---- templates are code: time and size limits ----------------------------------------------------

USER = [{"role": "user", "content": "Hi"}]

FOREVER = [
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    # the same without a call inside the loops: only the loop guard can see it
    "{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% for c in r %}{% endfor %}{% endfor %}{% endfor %}",
    "{% set d = dict.fromkeys(range(100000)) %}{% for a in d %}{% for b in d|list %}{% endfor %}{% endfor %}",
    "{% macro m(n) %}{% for i in range(100000) %}{% endfor %}{{ m(n) if n else '' }}{% endmacro %}{{ m(1) }}",
]


def test_a_template_that_loops_forever_is_stopped_by_the_default_time_limit():
    from llmcli.generation.chat import MAX_RENDER_SECONDS

    template = ChatTemplate.for_model(FOREVER[0])
    started = time.monotonic()
    with pytest.raises(BadInputError) as info:
        template.render(USER)
    elapsed = time.monotonic() - started
    assert str(info.value) == (f"chat template (model, tokenizer.chat_template) stopped: still rendering "
                               f"after the {MAX_RENDER_SECONDS:g} s limit")
    assert MAX_RENDER_SECONDS <= elapsed < MAX_RENDER_SECONDS + 3


@pytest.mark.parametrize("source", FOREVER)
def test_every_kind_of_endless_loop_is_stopped(source):
    template = ChatTemplate(source, max_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(BadInputError, match=r"stopped: still rendering after the 0.2 s limit|RecursionError"):
        template.render(USER)
    assert time.monotonic() - started < 3


HUGE = [
    "{{ 'x' * 10**10 }}",
    "{{ [1] * 10**10 }}",
    "{{ 7 ** 1000000000 }}",
    "{{ (2 ** 60000) * (2 ** 60000) }}",
    "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% set ns = namespace(s=['x']) %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{{ 'x'|center(10**9) }}",
    "{{ 'x'.ljust(10**9) }}",
    "{{ (1).to_bytes(10**9, 'big') }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '%*d' % (999999999, 1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '%0999999999d'|format(1) }}",
    "{% set s = 'x' * 1000000 %}{{ s|replace('', 'y' * 1000) }}",
    "{% set s = 'x' * 1000000 %}{{ s.replace('x', 'y' * 1000) }}",
    "{{ (['x' * 500000] * 100)|join }}",
    "{{ ('y' * 1000).join('x' * 1000000) }}",
    "{{ ('a\n' * 500000)|indent(10**5) }}",
    "{{ ('x' * 1000000)|wordwrap(1, wrapstring='y' * 1000) }}",
    "{{ ('\t' * 100000).expandtabs(100000) }}",
    "{{ range(100000)|list|tojson(indent=100000) }}",
    "{{ [1]|batch(10**9, 'x')|list }}",
    "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
    "{% macro m() %}{% for i in range(100000) %}0123456789{% endfor %}{% endmacro %}"
    "{% for i in range(100000) %}{% set x = m() %}{% endfor %}",
    "{% set x %}{% for i in range(100000) %}{% for j in range(100000) %}{{ 'ab' * 50 }}{% endfor %}{% endfor %}"
    "{% endset %}",
]


@pytest.mark.parametrize("source", HUGE)
def test_a_template_that_builds_a_huge_value_is_stopped_before_it_allocates(source):
    import tracemalloc

    template = ChatTemplate.for_model(source)
    tracemalloc.start()
    try:
        started = time.monotonic()
        with pytest.raises(BadInputError) as info:
            template.render(USER)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith("chat template (model, tokenizer.chat_template) stopped: ")
    assert "past the size limit of" in str(info.value) or "bits" in str(info.value)
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MB allocated"
    assert elapsed < 3


def test_long_conversations_are_not_mistaken_for_attacks():
    """The size budget grows with the conversation: 3 MB of messages (past MAX_RENDER_CHARS) render."""
    from llmcli.generation.chat import MAX_RENDER_CHARS

    big = [{"role": "user", "content": "word " * 200_000}, {"role": "assistant", "content": "ok " * 200_000},
           {"role": "user", "content": "é" * 1_500_000}]
    out = ChatTemplate.for_model(None).render(big)
    assert len(out) > 2 * MAX_RENDER_CHARS and out.endswith("<|im_start|>assistant\n")


def test_oversized_and_absurdly_nested_templates_are_refused():
    with pytest.raises(BadInputError, match=r"is 2,000,000 characters long; refusing more than"):
        ChatTemplate.for_model("x" * 2_000_000)
    with pytest.raises(BadInputError, match="does not parse"):
        ChatTemplate.for_model("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")
    with pytest.raises(BadInputError, match="'lipsum' is undefined"):
        ChatTemplate.for_model("{{ lipsum(10**6) }}").render(USER)


def test_a_model_whose_template_loops_forever_is_a_one_line_error(cli, tmp_path):
    from tests.conftest import gguf_with_template

    path = gguf_with_template(Path(__file__).parent / "data" / "gguf_ref" / "llama-f16.gguf",
                              tmp_path / "looping.gguf", FOREVER[1])
    res = cli("run", "-m", path, "--chat", "--temp", "0", "-n", "2", input="Hi\n")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: chat template (model, tokenizer.chat_template) stopped: still rendering after the 2 s limit")
