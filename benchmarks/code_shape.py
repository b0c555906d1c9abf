"""The shape of the package: files and lines per package, the largest module, the longest functions, cli.py's
size, and the cycles of the import graph. Reads source text only (nothing is imported).

    python benchmarks/code_shape.py [SRC_DIR ...]      # default: src/busflow; several trees print side by side
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = "busflow"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file below ``root`` (the package folder)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def lines_of(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def package_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return "(root)" if len(parts) == 1 else parts[0]


def function_lengths(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.end_lineno - node.lineno + 1, node.name) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``module`` imports (at any depth of the file, relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in known and t != module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def shape(root: Path) -> dict[str, str]:
    found = modules(root)
    per_package: dict[str, list[int]] = defaultdict(list)
    for path in found.values():
        per_package[package_of(path, root)].append(lines_of(path))
    largest = max(found, key=lambda m: lines_of(found[m]))
    longest = max(((n, f"{m}.{name}") for m, p in found.items() for n, name in function_lengths(p)))
    # A package's __init__ importing its own submodules is how Python loads them, not a dependency cycle.
    graph = {m: {t for t in imported_modules(m, p, set(found)) if not t.startswith(f"{m}.")} for m, p in found.items()}
    result = {f"package {name}": f"{len(sizes)} files, {sum(sizes)} lines" for name, sizes in sorted(per_package.items())}
    result["total"] = f"{len(found)} files, {sum(lines_of(p) for p in found.values())} lines"
    result["largest module"] = f"{largest} ({lines_of(found[largest])} lines)"
    result["longest function"] = f"{longest[1]} ({longest[0]} lines)"
    result["cli.py lines"] = str(lines_of(root / "cli.py"))
    found_cycles = cycles(graph)
    result["import cycles"] = "; ".join(" ↔ ".join(c) for c in found_cycles) if found_cycles else "none"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path, default=[Path("src/busflow")])
    args = parser.parse_args()
    shapes = [shape(root) for root in args.roots]
    every = dict.fromkeys(key for s in shapes for key in s)
    keys = sorted(k for k in every if k.startswith("package ")) + [k for k in every if not k.startswith("package ")]
    print("| measure | " + " | ".join(str(root) for root in args.roots) + " |")
    print("|---|" + "---|" * len(shapes))
    for key in keys:
        print(f"| {key} | " + " | ".join(s.get(key, "—") for s in shapes) + " |")


if __name__ == "__main__":
    main()
