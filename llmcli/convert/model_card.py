"""The model card (README.md front matter) -> general.* keys, as llama.cpp's converter reads it.

A Hugging Face model card starts with YAML between two `---` lines: license, tags, language,
base_model, datasets, sometimes model_name... llama.cpp copies these into `general.license`,
`general.tags`, `general.languages`, `general.base_model.N.*`, `general.dataset.N.*`.

We read the subset of YAML model cards use for those keys, without a YAML library: top-level
`key: value` lines where the value is a scalar, a quoted string, an inline list `[a, b]` or a block
list of `- item` lines (item: scalar, or `key: value` pairs of a small mapping). Other top-level
keys (model-index, widget, nested maps, multi-line strings) are skipped over. Scalars are typed as
YAML 1.1 does (null, booleans, numbers), after llama.cpp's own fix-ups (`- no` kept as the string
"no", tabs as two spaces).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)")
_FLOAT = re.compile(r"[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)?")
_BOOLS = {"true": True, "yes": True, "on": True, "y": True, "false": False, "no": False, "off": False, "n": False}


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        body = text[1:-1]
        return body.replace("''", "'") if text[0] == "'" else bytes(body, "utf-8").decode("unicode_escape")
    text = re.sub(r"\s+#.*$", "", text)  # trailing comment
    low = text.lower()
    if low in ("", "~", "null"):
        return None
    if low in _BOOLS and low not in ("y", "n"):
        return _BOOLS[low]
    if _INT.fullmatch(text):
        return int(text.replace("_", ""))
    if _FLOAT.fullmatch(text) and any(c.isdigit() for c in text):
        return float(text.replace("_", ""))
    return text


def _split_inline_list(text: str) -> list[Any]:
    items, current, quote = [], "", None
    for c in text:
        if quote:
            current += c
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
            current += c
        elif c == ",":
            items.append(current)
            current = ""
        else:
            current += c
    if current.strip():
        items.append(current)
    return [_scalar(i) for i in items]


def _value(text: str) -> Any:
    text = text.strip()
    if text.startswith("[") and text.rstrip().endswith("]"):
        return _split_inline_list(text.strip()[1:-1])
    if text.startswith(("{", "|", ">", "&", "*", "!")):
        return _SKIP
    return _scalar(text)


_SKIP = object()


def parse_front_matter(text: str) -> dict[str, Any]:
    """The top-level keys of a model card's YAML front matter we understand (see module doc)."""
    lines = text.splitlines()
    if not lines or lines[0] != "---":
        return {}
    body = []
    for line in lines[1:]:
        if line == "---":
            break
        body.append(line)
    yaml = ("\n".join(body) + "\n").replace("- no\n", '- "no"\n').replace("\t", "  ")
    out: dict[str, Any] = {}
    key = None
    block: list[str] = []

    def close() -> None:
        if key is None:
            return
        value = _block(block)
        if value is not _SKIP:
            out[key] = value

    for line in yaml.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith((" ", "-")) and ":" in line:
            close()
            key, _, rest = line.partition(":")
            key = key.strip().strip("'\"")
            block = [] if not rest.strip() else [rest]
            if rest.strip():
                value = _value(rest)
                if value is not _SKIP:
                    out[key] = value
                key = None
            continue
        if key is not None:
            block.append(line)
    close()
    return out


def _block(lines: list[str]) -> Any:
    """An indented block after `key:` - a list of scalars or small mappings, else skipped."""
    if not lines:
        return None
    items: list[Any] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("- "):
            item = stripped[2:]
            if re.match(r"^[\w.-]+:\s", item) or item.endswith(":"):
                k, _, v = item.partition(":")
                items.append({k.strip(): _scalar(v)})
            else:
                items.append(_scalar(item))
        elif stripped == "-":
            items.append(None)
        elif items and isinstance(items[-1], dict) and ":" in stripped:
            k, _, v = stripped.partition(":")
            items[-1][k.strip()] = _scalar(v)
        else:
            return _SKIP  # a nested mapping or a multi-line string: not a key llama.cpp copies
    return items


def read_model_card(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "README.md"
    if not path.is_file():
        return {}
    try:
        return parse_front_matter(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}
