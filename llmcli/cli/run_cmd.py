"""`llmcli run` (and `llmcli chat`): generate text from a prompt, or chat, streaming tokens as they come."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
from pathlib import Path

import typer

from ..engine.kv_cache import DEFAULT_KV_TYPE, KV_TYPES
from ..engine.prompt_activations import DEFAULT_PROMPT_ACTIVATIONS, check_prompt_activations
from ..errors import BadInputError
from ..generation.sampling import SamplingParams
from .app import app, err_console

SAMPLING_HELP = "Sampling (llama.cpp's defaults; --temp 0 is greedy)"
_DEFAULTS = SamplingParams()

# Options `run` and `chat` share, declared once (defaults: SamplingParams, the only copy).
MODEL = typer.Option(None, "-m", "--model", help="GGUF model file (default: the demo model).")
STOP = typer.Option([], "--stop", help="Stop when the text contains this (repeatable).")
CTX_SIZE = typer.Option(None, "-c", "--ctx-size", help="Context size (default 4096, or the model's if smaller).")
THREADS = typer.Option(None, "-t", "--threads", help="CPU threads (default: up to the physical cores, 1 while that measures faster on a busy machine).")
BATCH_SIZE = typer.Option(512, "-b", "--batch-size", help="Prompt tokens evaluated per batch.")
NO_MMAP = typer.Option(False, "--no-mmap", help="Read the model into memory instead of mapping it (llama.cpp's --no-mmap).")
MLOCK = typer.Option(False, "--mlock", help="Lock the model in RAM so it is never paged out (llama.cpp's --mlock).")
CACHE_TYPE_K = typer.Option(DEFAULT_KV_TYPE, "-ctk", "--cache-type-k", help=f"KV cache type for keys: {', '.join(KV_TYPES)}.")
CACHE_TYPE_V = typer.Option(DEFAULT_KV_TYPE, "-ctv", "--cache-type-v", help=f"KV cache type for values: {', '.join(KV_TYPES)}.")
ACTIVATIONS = typer.Option(DEFAULT_PROMPT_ACTIVATIONS, "--activations",
                          help="How prompts treat activations: int8-gemm (8-bit, integer GEMMs: llama.cpp's "
                               "arithmetic, the fastest; float32 GEMMs for weight types without one), float "
                               "(float32 GEMMs: the more exact) or int8 (8-bit, mat-vec arithmetic: row-exact, "
                               "the slowest).")
SYSTEM = typer.Option(None, "--system", help="System message for the chat.")
VERBOSE = typer.Option(False, "-v", help="Print what the model holds in memory (the KV cache: types, bytes, "
                                         "per sequence) after loading it.")
TEMP = typer.Option(_DEFAULTS.temp, "--temp", help="Temperature; 0 = greedy.", rich_help_panel=SAMPLING_HELP)
TOP_K = typer.Option(_DEFAULTS.top_k, "--top-k", help="Keep the k best tokens (0 = off).", rich_help_panel=SAMPLING_HELP)
TOP_P = typer.Option(_DEFAULTS.top_p, "--top-p", help="Nucleus mass (1 = off).", rich_help_panel=SAMPLING_HELP)
MIN_P = typer.Option(_DEFAULTS.min_p, "--min-p", help="Minimum probability relative to the best (0 = off).",
                     rich_help_panel=SAMPLING_HELP)
REPEAT_PENALTY = typer.Option(_DEFAULTS.repeat_penalty, "--repeat-penalty",
                              help="Penalty for repeated tokens (1 = off).", rich_help_panel=SAMPLING_HELP)
REPEAT_LAST_N = typer.Option(_DEFAULTS.repeat_last_n, "--repeat-last-n",
                             help="Tokens the penalty looks back (-1 = context).", rich_help_panel=SAMPLING_HELP)
SEED = typer.Option(_DEFAULTS.seed, "--seed", help="Random seed (default: random).", rich_help_panel=SAMPLING_HELP)
CONSTRAINTS_HELP = "Structured output (one of these)"
GRAMMAR = typer.Option(None, "--grammar", help="GBNF grammar the output must follow (llama.cpp's syntax).",
                       rich_help_panel=CONSTRAINTS_HELP)
GRAMMAR_FILE = typer.Option(None, "--grammar-file", help="Read the GBNF grammar from a file.",
                            rich_help_panel=CONSTRAINTS_HELP)
JSON_SCHEMA = typer.Option(None, "-j", "--json-schema",
                           help="JSON schema the output must validate against: a file, or the schema itself.",
                           rich_help_panel=CONSTRAINTS_HELP)



class OptionGroup(dict):
    """Options several commands take, declared once: parameter name -> (type, typer option)."""


# the model-loading options of run, chat, batch and serve (`_load`'s keywords)
LOAD_OPTIONS = OptionGroup(ctx_size=(int, CTX_SIZE), threads=(int, THREADS), batch_size=(int, BATCH_SIZE),
                           no_mmap=(bool, NO_MMAP), mlock=(bool, MLOCK), cache_type_k=(str, CACHE_TYPE_K),
                           cache_type_v=(str, CACHE_TYPE_V))
# the sampling options of run, chat and batch (SamplingParams' fields)
SAMPLING_OPTIONS = OptionGroup(temp=(float, TEMP), top_k=(int, TOP_K), top_p=(float, TOP_P), min_p=(float, MIN_P),
                               repeat_penalty=(float, REPEAT_PENALTY), repeat_last_n=(int, REPEAT_LAST_N),
                               seed=(int, SEED))


def option_groups(command):
    """Decorator (under `@app.command()`): a parameter of `command` whose default is an
    OptionGroup stands for the group's options, which typer sees in its place in this order; the
    command receives their values as a dict under the parameter's name."""
    signature = inspect.signature(command, eval_str=True)
    params, groups = [], {}
    for param in signature.parameters.values():
        if isinstance(param.default, OptionGroup):
            groups[param.name] = list(param.default)
            params += [param.replace(name=name, annotation=kind, default=option)
                       for name, (kind, option) in param.default.items()]
        else:
            params.append(param)

    @functools.wraps(command)
    def with_groups(**values):
        for name, members in groups.items():
            values[name] = {member: values.pop(member) for member in members}
        return command(**values)

    with_groups.__signature__ = signature.replace(parameters=params)
    return with_groups


def _read_grammar(grammar: str | None, grammar_file: Path | None, json_schema: str | None):
    """The compiled grammar --grammar, --grammar-file or --json-schema asks for (None: none)."""
    from ..generation.grammar import GrammarError, to_grammar

    given = [name for name, value in (("--grammar", grammar), ("--grammar-file", grammar_file),
                                      ("--json-schema", json_schema)) if value is not None]
    if len(given) > 1:
        raise BadInputError(f"give one of --grammar, --grammar-file, --json-schema, not {' and '.join(given)}")
    if grammar_file is not None:
        try:
            text = grammar_file.read_text(encoding="utf-8")
        except OSError as e:
            raise BadInputError(f"{grammar_file}: cannot read the grammar file: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise BadInputError(f"{grammar_file}: the grammar file is not UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            return to_grammar(text)
        except GrammarError as e:
            raise GrammarError(f"{grammar_file}: {e}", e.kind) from None
    if json_schema is not None:
        return to_grammar(json_schema=_read_schema(json_schema))
    return to_grammar(grammar)


def _read_schema(value: str) -> dict:
    """--json-schema: a file holding the schema, or the schema's JSON itself."""
    source, text = "--json-schema", value
    path = Path(value)
    if not value.lstrip().startswith("{"):
        try:
            source, text = str(path), path.read_text(encoding="utf-8")
        except OSError as e:
            raise BadInputError(f"--json-schema: {value} is neither a readable file ({e.strerror}) "
                                f"nor a JSON object") from None
        except UnicodeDecodeError as e:
            raise BadInputError(f"{path}: the schema file is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(f"{source}: the schema is not valid JSON ({e.msg} at line {e.lineno}, "
                            f"column {e.colno})") from None
    if not isinstance(schema, dict):
        raise BadInputError(f"{source}: a JSON schema must be a JSON object")
    return schema


def _read_prompt(prompt: str | None, file: Path | None) -> str | None:
    if prompt is not None and file is not None:
        raise BadInputError("give the prompt with -p or -f, not both")
    if file is None:
        return prompt
    try:
        return file.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInputError(f"{file}: cannot read the prompt file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise BadInputError(f"{file}: the prompt file is not UTF-8 ({e.reason} at byte {e.start})") from None


@contextlib.contextmanager
def _loading_status(message: str):
    """A spinner on stderr while the model loads; from then on, a notice whenever numba compiles
    kernels (their first use on this machine: seconds each, cached on disk afterwards)."""
    from ..engine.jit import on_compile_start

    said = []

    def notice() -> None:
        if not said:
            said.append(True)
            err_console.print("[dim]compiling kernels (their first use on this machine; cached for later runs)…[/]",
                              highlight=False)

    on_compile_start(notice)
    if err_console.is_terminal:
        with err_console.status(message, spinner="dots"):
            yield
    else:
        yield


def _print_timings(completion) -> None:
    t = completion.timings
    err_console.print(
        f"[dim]prompt: {t.prompt_n} tokens, {t.prompt_per_second:.2f} t/s | "
        f"generated: {t.predicted_n} tokens, {t.predicted_per_second:.2f} t/s | "
        f"stop: {completion.stop_reason}"
        + (f" | compiling kernels: {t.compile_ms / 1000:.1f} s (not in the rates)" if t.compile_ms else "")
        + "[/]", highlight=False, soft_wrap=True)


def check_activations(activations: str) -> None:
    """--activations names one of the prompt-activation modes (engine/prompt_activations.py)."""
    check_prompt_activations(activations, "--activations")


def check_load_options(threads: int | None, batch_size: int, activations: str) -> None:
    """The checks of LOAD_OPTIONS and --activations that need no model."""
    check_activations(activations)
    if batch_size <= 0:
        raise BadInputError(f"--batch-size must be positive, got {batch_size}")
    if threads is not None and threads <= 0:
        raise BadInputError(f"--threads must be positive, got {threads}")


def _load(model: Path | None, threads: int | None, ctx_size: int | None, batch_size: int, no_mmap: bool = False,
          mlock: bool = False, cache_type_k: str = DEFAULT_KV_TYPE, cache_type_v: str = DEFAULT_KV_TYPE,
          parallel: int = 1, activations: str = DEFAULT_PROMPT_ACTIVATIONS):
    from ..api import load

    check_load_options(threads, batch_size, activations)
    name = model.name if model else "the demo model (Gemma 3 270M)"
    with _loading_status(f"loading {name}"):
        return load(model, threads=threads, ctx_size=ctx_size, batch_size=batch_size, use_mmap=not no_mmap,
                    mlock=mlock, cache_type_k=cache_type_k, cache_type_v=cache_type_v, parallel=parallel,
                    prompt_activations=activations)


def _print_memory(llm) -> None:
    """`-v`: the KV cache's memory, as llama.cpp's llama_kv_cache line gives it."""
    kv = llm.kv_memory
    err_console.print(
        f"[dim]KV cache: {kv['bytes'] / 2**20:.2f} MiB ({kv['n_seq']} sequence(s) x {kv['n_ctx']} positions, "
        f"{kv['bytes_per_sequence'] / 2**20:.2f} MiB each), K ({kv['type_k']}): {kv['bytes_k'] / 2**20:.2f} MiB, "
        f"V ({kv['type_v']}): {kv['bytes_v'] / 2**20:.2f} MiB per sequence[/]", highlight=False, soft_wrap=True)


def _stream(completion, as_json: bool) -> None:
    """Print a completion as it is generated (or collect it for --json)."""
    try:
        for piece in completion:
            if not as_json:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C while printing: still report what we have
        completion.stop_reason = "interrupted"


def _chat_loop(llm, params, n_predict: int, stop: list[str], system: str | None, first: str | None,
               grammar=None) -> None:
    """Interactive turns: a line of input per user message; /exit ends, /reset forgets the conversation."""
    messages = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    err_console.print(f"[dim]chat template: {llm.chat_template.origin}. Type /exit to quit, /reset to "
                      f"start over.[/]", highlight=False)
    pending = first
    while True:
        if pending is None:
            if interactive:
                err_console.print("[bold green]> [/]", end="")
            line = sys.stdin.readline()
            if not line:
                break
            pending = line.rstrip("\n")
        text, pending = pending, None
        if not text.strip():
            continue
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            messages = [{"role": "system", "content": system}] if system else []
            llm.reset()
            err_console.print("[dim]conversation reset[/]")
            continue
        messages.append({"role": "user", "content": text})
        completion = llm.chat_completion(messages, max_tokens=n_predict, params=params, stop=stop, grammar=grammar)
        _stream(completion, as_json=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": completion.text})
        _print_timings(completion)
        if completion.stop_reason == "interrupted":
            break
        if completion.stop_reason == "context":
            err_console.print("[yellow]the context is full: /reset to start a new conversation[/]")


@app.command()
@option_groups
def run(
    model: Path = MODEL,
    prompt: str = typer.Option(None, "-p", "--prompt", help="Text to continue."),
    file: Path = typer.Option(None, "-f", "--file", help="Read the prompt from a file."),
    n_predict: int = typer.Option(-1, "-n", "--n-predict",
                                  help="Tokens to generate (-1: until end of generation or a full context)."),
    stop: list[str] = STOP,
    load: dict = LOAD_OPTIONS,
    activations: str = ACTIVATIONS,
    verbose: bool = VERBOSE,
    sampling: dict = SAMPLING_OPTIONS,
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Keep generating past end-of-generation tokens."),
    no_parse_special: bool = typer.Option(False, "--no-parse-special",
                                          help="Treat special-token text in the prompt as plain text."),
    chat: bool = typer.Option(False, "--chat", help="Interactive chat with the model's chat template."),
    system: str = SYSTEM,
    grammar: str = GRAMMAR,
    grammar_file: Path = GRAMMAR_FILE,
    json_schema: str = JSON_SCHEMA,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with ids, text, stop reason, timings."),
) -> None:
    """Generate text from a prompt, streaming it as it comes; timings go to stderr."""
    params = SamplingParams(**sampling).validate()
    _check_n_predict(n_predict)
    text = _read_prompt(prompt, file)
    constraint = _read_grammar(grammar, grammar_file, json_schema)
    if chat:
        if as_json:
            raise BadInputError("--json does not apply to --chat")
        llm = _load(model, **load, activations=activations)
        if verbose:
            _print_memory(llm)
        _chat_loop(llm, params, n_predict, stop, system, text, constraint)
        return
    if text is None:
        raise BadInputError("no prompt: give one with -p TEXT or -f FILE (or use --chat)")
    llm = _load(model, **load, activations=activations)
    if verbose:
        _print_memory(llm)
    completion = llm.complete(text, max_tokens=n_predict, params=params, stop=stop,
                              parse_special=not no_parse_special, ignore_eos=ignore_eos, grammar=constraint)
    _stream(completion, as_json)
    if as_json:
        print(json.dumps({
            "prompt": text,
            "prompt_tokens": completion.prompt_tokens,
            "tokens": completion.tokens,
            "text": completion.text,
            "stop_reason": completion.stop_reason,
            "seed": completion.sampler.seed,
            "timings": completion.timings.to_dict(),
        }, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
        _print_timings(completion)


def _check_n_predict(n_predict: int) -> None:
    if n_predict < -1:
        raise BadInputError(f"--n-predict must be -1 (no limit) or more, got {n_predict}")


@app.command("chat")
@option_groups
def chat_command(
    model: Path = MODEL,
    system: str = SYSTEM,
    n_predict: int = typer.Option(-1, "-n", "--n-predict", help="Tokens per reply (-1: until end of turn)."),
    stop: list[str] = STOP,
    load: dict = LOAD_OPTIONS,
    activations: str = ACTIVATIONS,
    verbose: bool = VERBOSE,
    sampling: dict = SAMPLING_OPTIONS,
) -> None:
    """Chat with a model (same as `llmcli run --chat`)."""
    params = SamplingParams(**sampling).validate()
    _check_n_predict(n_predict)
    llm = _load(model, **load, activations=activations)
    if verbose:
        _print_memory(llm)
    _chat_loop(llm, params, n_predict, stop, system, None)
