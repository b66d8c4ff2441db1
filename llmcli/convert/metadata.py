"""GGUF metadata as llama.cpp's converter builds it: an ordered key store and the `general.*` keys.

`KV` keeps insertion order and, like gguf-py's writer, lets a later `add` of the same key replace
the value in place (architectures that override a generic hyperparameter keep its position).

`general.name` and friends come from the model directory's basename by llama.cpp's heuristics
(`llama_bf16` -> name "Llama_Bf16"; `Mistral-7B-Instruct-v0.2` -> basename "Mistral", size label
"7B", finetune "Instruct", version "v0.2"). The model card (README.md) is not read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..gguf.constants import ValueType
from ..gguf.reader import MetadataValue


class KV:
    """Ordered GGUF metadata; `arch` prefixes the architecture keys (`llama.block_count`)."""

    def __init__(self, arch: str):
        self.arch = arch
        self.entries: dict[str, MetadataValue] = {}

    def put(self, key: str, mv: MetadataValue) -> None:
        self.entries[key] = mv

    def remove(self, key: str) -> None:
        self.entries.pop(key, None)

    def string(self, key: str, value: str) -> None:
        self.put(key, MetadataValue(ValueType.STRING, str(value)))

    def u32(self, key: str, value: int) -> None:
        self.put(key, MetadataValue(ValueType.UINT32, int(value)))

    def i32(self, key: str, value: int) -> None:
        self.put(key, MetadataValue(ValueType.INT32, int(value)))

    def f32(self, key: str, value: float) -> None:
        # stored as float32; keep the float32-rounded value so reading back compares equal
        self.put(key, MetadataValue(ValueType.FLOAT32, float(np.float32(value))))

    def boolean(self, key: str, value: bool) -> None:
        self.put(key, MetadataValue(ValueType.BOOL, bool(value)))

    def array(self, key: str, values: Iterable[Any], item_type: ValueType) -> None:
        if item_type == ValueType.STRING:
            values = [str(v) for v in values]
        else:
            from ..gguf.constants import SCALAR_DTYPE
            values = np.asarray(list(values), dtype=SCALAR_DTYPE[item_type])
        self.put(key, MetadataValue(ValueType.ARRAY, values, item_type))

    # architecture-prefixed shorthands
    def a_u32(self, name: str, value: int) -> None:
        self.u32(f"{self.arch}.{name}", value)

    def a_f32(self, name: str, value: float) -> None:
        self.f32(f"{self.arch}.{name}", value)

    def a_bool(self, name: str, value: bool) -> None:
        self.boolean(f"{self.arch}.{name}", value)

    def extend(self, entries: dict[str, MetadataValue]) -> None:
        for key, mv in entries.items():
            self.put(key, mv)


# -- sizes ---------------------------------------------------------------------------------------


def rounded_count(n: int, min_digits: int = 2) -> str:
    """1_234_567 -> '1.2M', 202_000 -> '202K' (llama.cpp's size notation)."""
    for limit, scale, suffix in ((1e12, 1e-12, "T"), (1e9, 1e-9, "B"), (1e6, 1e-6, "M")):
        if n > limit:
            value = n * scale
            break
    else:
        value, suffix = n * 1e-3, "K"
    decimals = max(min_digits - len(str(round(value)).lstrip("0")), 0)
    return f"{value:.{decimals}f}{suffix}"


def size_label(total: int, shared: int, expert: int, expert_count: int) -> str:
    if expert_count > 0:
        return f"{expert_count}x{rounded_count(abs(shared) + abs(expert))}"
    return rounded_count(abs(total))


def parameter_counts(tensors: Iterable[tuple[str, tuple[int, ...]]]) -> tuple[int, int, int, int]:
    """(total, shared, per-expert, expert count) over (GGUF name, numpy-order shape) pairs."""
    total = shared = expert = expert_sum = n_expert_tensors = 0
    for name, shape in tensors:
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if "_exps." in name and len(shape) >= 3:
            count = shape[-2 if ".bias" in name else -3]
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    count = expert_sum // n_expert_tensors if n_expert_tensors else 0
    return total, shared, expert, count


# -- names from the directory ---------------------------------------------------------------------


def id_to_title(text: str) -> str:
    """'mistral-7b-instruct' -> 'Mistral 7b Instruct'; acronyms and versions kept as written."""
    return " ".join(w.title() if w.islower() and not re.match(r"^(v\d+(?:\.\d+)*|\d.*)$", w) else w
                    for w in text.strip().replace("-", " ").split())


def model_id_components(model_id: str, total_params: int) -> dict[str, str | None]:
    """Split a model id into name, basename, size label, finetune and version as llama.cpp does."""
    result = dict(name=model_id, organization=None, basename=None, size_label=None, finetune=None, version=None)
    if " " in model_id:
        return result
    org, name = model_id.split("/", 1) if "/" in model_id else (None, model_id)
    result["name"] = name
    result["organization"] = org if org and not org.startswith(".") else None
    parts = [p for p in name.split("-") if p]
    kinds: list[set[str]] = [set() for _ in parts]
    for i, part in enumerate(parts):
        if re.fullmatch(r"(v|iter)?\d+([.]\d+)*", part, re.IGNORECASE):
            kinds[i].add("version")
        elif re.fullmatch(r"i?q\d(_\w)*|b?fp?(16|32)", part, re.IGNORECASE):
            kinds[i].add("type")
            parts[i] = part.upper()
        elif i > 0 and re.fullmatch(r"(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)",
                                    part, re.IGNORECASE):
            part = part.replace("_", ".")
            if part[-1].isdecimal():  # bloom-7b1 -> 7.1b
                part = part[:-2] + "." + part[-1] + part[-2]
            if len(part) > 1 and part[-2].isdecimal() and part[-1] in "kmbt":
                part = part[:-1] + part[-1].upper()
            if total_params != 0:
                try:
                    label = float(part[:-1]) * pow(1000, " KMBT".find(part[-1]))
                    if (total_params < 0 and label < abs(total_params) // 8) or (
                            total_params > 0 and abs(label - total_params) > 7 * total_params // 8):
                        kinds[i].add("finetune")  # most likely a context length
                        part = part[:-1] + part[-1].lower()
                except ValueError:
                    pass
            if not kinds[i]:
                kinds[i].add("size_label")
            parts[i] = part
        elif i > 0 and re.fullmatch(r"chat|instruct|vision|lora", part, re.IGNORECASE):
            # "lora" in an adapter's name (negative total_params) is its type, not a finetune
            kinds[i].add("type" if total_params < 0 and part.lower() == "lora" else "finetune")
    if any(c.isdecimal() for p, k in zip(parts, kinds) if "size_label" in k for c in p):
        for p, k in zip(parts, kinds):
            if "size_label" in k and all(c.isalpha() for c in p):
                k.remove("size_label")
    at_start = True
    for p, k in zip(parts, kinds):
        if at_start and ((not k and p[0].isalpha()) or "version" in k):
            k.add("basename")
        else:
            at_start = False
            if not k:
                k.add("finetune")
    for p, k in zip(reversed(parts), reversed(kinds)):
        if "basename" in k and len(k) > 1:
            k.remove("basename")
        else:
            break

    def joined(kind: str, exclude: str | None = None, unique: bool = False) -> str | None:
        picked = [p for p, k in zip(parts, kinds) if kind in k and (exclude is None or exclude not in k)]
        if unique:
            picked = list(dict.fromkeys(picked))
        return "-".join(picked) or None

    result.update(basename=joined("basename"), size_label=joined("size_label", unique=True),
                  finetune=joined("finetune"), version=joined("version", exclude="basename"))
    if result["size_label"] is None and result["finetune"] is None and result["version"] is None:
        result["basename"] = None
    return result


# generation_config.json key -> (GGUF key, value type), in llama.cpp's writing order
SAMPLING_KEYS = [
    ("sequence", "general.sampling.sequence", ValueType.STRING),
    ("top_k", "general.sampling.top_k", ValueType.INT32),
    ("top_p", "general.sampling.top_p", ValueType.FLOAT32),
    ("min_p", "general.sampling.min_p", ValueType.FLOAT32),
    ("xtc_probability", "general.sampling.xtc_probability", ValueType.FLOAT32),
    ("xtc_threshold", "general.sampling.xtc_threshold", ValueType.FLOAT32),
    ("temperature", "general.sampling.temp", ValueType.FLOAT32),
    ("penalty_last_n", "general.sampling.penalty_last_n", ValueType.INT32),
    ("repetition_penalty", "general.sampling.penalty_repeat", ValueType.FLOAT32),
    ("mirostat", "general.sampling.mirostat", ValueType.INT32),
    ("mirostat_tau", "general.sampling.mirostat_tau", ValueType.FLOAT32),
    ("mirostat_eta", "general.sampling.mirostat_eta", ValueType.FLOAT32),
]


# model card key -> general field, in llama.cpp's order of precedence (first found wins)
CARD_FIELDS = [
    ("name", "name"), ("author", "author"), ("version", "version"), ("organization", "organization"),
    ("description", "description"), ("finetune", "finetune"), ("basename", "basename"),
    ("size_label", "size_label"), ("source_url", "url"), ("source_doi", "doi"), ("source_uuid", "uuid"),
    ("source_repo_url", "repo_url"),
    ("name", "model_name"), ("author", "model_author"), ("version", "model_version"),
    ("organization", "model_organization"), ("description", "model_description"), ("finetune", "model_finetune"),
    ("basename", "model_basename"), ("size_label", "model_size_label"), ("source_url", "model_url"),
    ("source_doi", "model_doi"), ("source_uuid", "model_uuid"), ("source_repo_url", "model_repo_url"),
    ("author", "model_creator"), ("basename", "model_type"),
    ("license", "license"), ("license_name", "license_name"), ("license_link", "license_link"),
]
# general field -> GGUF key, in the order llama.cpp writes them (after general.name)
GENERAL_KEYS = [
    ("author", "general.author"), ("version", "general.version"), ("organization", "general.organization"),
    ("finetune", "general.finetune"), ("basename", "general.basename"), ("description", "general.description"),
    ("size_label", "general.size_label"), ("license", "general.license"), ("license_name", "general.license.name"),
    ("license_link", "general.license.link"), ("source_url", "general.source.url"),
    ("source_doi", "general.source.doi"), ("source_uuid", "general.source.uuid"),
    ("source_repo_url", "general.source.repo_url"),
]
ENTRY_FIELDS = ["name", "author", "version", "organization", "description", "url", "doi", "uuid", "repo_url"]
_HF_URL = re.compile(r"https?://huggingface.co/([^/]+/[^/]+)$")


def _entry_from_id(model_id: Any, total_params: int) -> dict:
    """A base model or dataset named by a Hugging Face id or URL -> {name, organization, version, repo_url}."""
    if isinstance(model_id, dict):
        return model_id
    if not isinstance(model_id, str):
        return {}
    entry: dict[str, str] = {}
    hf_id = model_id
    if model_id.startswith(("http://", "https://", "ssh://")):
        entry["repo_url"] = model_id
        m = _HF_URL.match(model_id) if "huggingface.co" in model_id else None
        if m is None:
            return entry
        hf_id = m.group(1)
    parts = model_id_components(hf_id, total_params)
    if parts["name"] is not None:
        entry["name"] = id_to_title(parts["name"])
    if parts["organization"] is not None:
        entry["organization"] = id_to_title(parts["organization"])
    if parts["version"] is not None:
        entry["version"] = parts["version"]
    if hf_id is model_id and parts["organization"] is not None and parts["name"] is not None:
        entry["repo_url"] = f"https://huggingface.co/{parts['organization']}/{parts['name']}"
    return entry


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def general_fields(model_dir: Path, config: dict, total_params: int) -> dict[str, Any]:
    """llama.cpp's metadata heuristics: model card first, then config.json's `_name_or_path` (when
    it looks like a model id), then the directory name, each filling only what is still unknown."""
    from .model_card import read_model_card

    card = read_model_card(model_dir)
    fields: dict[str, Any] = {}
    for field, card_key in CARD_FIELDS:
        if card_key in card and fields.get(field) is None:
            fields[field] = card[card_key]
    for plural, keys in (("base_models", ("base_model", "base_models", "base_model_sources")),
                         ("datasets", ("datasets", "dataset", "dataset_sources"))):
        if any(k in card for k in keys):
            ids = next((card[k] for k in keys if k in card), None)
            fields[plural] = [_entry_from_id(i, total_params) for i in _as_list(ids)]
    for plural, keys in (("tags", ("tags", "pipeline_tag")), ("languages", ("languages", "language"))):
        for k in keys:
            if card.get(k) is not None:
                fields.setdefault(plural, []).extend(_as_list(card[k]))

    ids = []
    name_or_path = config.get("_name_or_path")
    if isinstance(name_or_path, str) and name_or_path.count("/") <= 1:
        ids.append(name_or_path)
    ids.append(model_dir.name if model_dir.name not in ("", ".", "..") else model_dir.resolve().name)
    for model_id in ids:
        parts = model_id_components(model_id, total_params)
        for field in ("name", "organization"):
            if fields.get(field) is None and parts[field] is not None:
                fields[field] = id_to_title(parts[field])
        for field in ("basename", "finetune", "version", "size_label"):
            if fields.get(field) is None and parts[field] is not None:
                fields[field] = parts[field]
    if fields.get("name") is None:
        fields["name"] = model_dir.name
    return fields


def add_general(kv: KV, model_dir: Path, config: dict, total_params: int, shared: int, expert: int,
                expert_count: int) -> None:
    """general.type, sampling defaults, name and the rest of general.* in llama.cpp's order."""
    kv.string("general.type", "model")
    gen_path = model_dir / "generation_config.json"
    try:
        gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        gen = {}  # llama.cpp ignores an unreadable generation_config.json too
    for src, key, vtype in SAMPLING_KEYS:
        value = gen.get(src)
        if src == "repetition_penalty":
            value = gen.get("penalty_repeat", value)
        if value is None:
            continue
        if vtype == ValueType.STRING:
            kv.string(key, value)
        elif vtype == ValueType.INT32:
            kv.i32(key, value)
        else:
            kv.f32(key, value)

    fields = general_fields(model_dir, config, total_params)
    if fields.get("size_label") is None and total_params > 0:
        fields["size_label"] = size_label(total_params, shared, expert, expert_count)
    if isinstance(fields.get("license"), list):
        fields["license"] = ",".join(str(x) for x in fields["license"])
    kv.string("general.name", fields["name"])
    for field, key in GENERAL_KEYS:
        if fields.get(field) is not None:
            kv.string(key, fields[field])
    for plural, prefix in (("base_models", "general.base_model"), ("datasets", "general.dataset")):
        if plural not in fields:
            continue
        kv.u32(f"{prefix}.count", len(fields[plural]))
        for i, entry in enumerate(fields[plural]):
            for field in ENTRY_FIELDS:
                if field in entry:
                    kv.string(f"{prefix}.{i}.{field}", entry[field])
    for plural, key in (("tags", "general.tags"), ("languages", "general.languages")):
        if plural in fields:
            kv.array(key, fields[plural], ValueType.STRING)
