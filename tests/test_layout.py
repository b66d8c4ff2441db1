"""The README's layout table is the import order: no module imports a layer listed above its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> dict[str, int]:
    """`llmcli/x` (a folder or a module, as the README names it) -> its row, from the bottom up."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `llmcli/")]
    return {name.rstrip("/").removesuffix(".py"): i for i, row in enumerate(rows)
            for name in re.findall(r"`(llmcli/[\w./]+)`", row.split("|")[1])}


def _imported(path: Path) -> set[str]:
    """The top-level llmcli names (`llmcli/x`) a module imports, at any depth of its code."""
    package = path.relative_to(ROOT).parent.parts  # ("llmcli", "engine", "kernels") for a kernel module
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = [p for p in list(package[:len(package) - node.level + 1]) + (node.module or "").split(".") if p]
            if len(parts) >= 2:
                found.add("/".join(parts[:2]))
            else:  # `from .. import x` up to the package: x is a layer, or an attribute such as __version__
                found.update(f"llmcli/{a.name}" for a in node.names
                             if (ROOT / "llmcli" / a.name).is_dir() or (ROOT / "llmcli" / f"{a.name}.py").is_file())
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmcli."):
            found.add("/".join(node.module.split(".")[:2]))
        elif isinstance(node, ast.Import):
            found.update("/".join(a.name.split(".")[:2]) for a in node.names if a.name.startswith("llmcli."))
    return found


def test_readme_layout_table_lists_layers_in_import_order():
    layers = _layers()
    assert {"llmcli/gguf", "llmcli/quants", "llmcli/engine", "llmcli/server", "llmcli/cli"} <= set(layers)
    upward, unlisted = [], set()
    for path in sorted((ROOT / "llmcli").rglob("*.py")):
        top = "/".join(path.relative_to(ROOT).with_suffix("").parts[:2])
        if top in ("llmcli/__init__", "llmcli/__main__"):
            continue  # the package's front door re-exports the API on top
        if top not in layers:
            unlisted.add(top)
            continue
        for target in _imported(path) - {top, "llmcli/"}:
            if target not in layers:
                unlisted.add(target)
            elif layers[target] > layers[top]:
                upward.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not unlisted, f"not in the README's layout table: {sorted(unlisted)}"
    assert not upward, upward
