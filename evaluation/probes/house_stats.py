"""Probe (not shipped). Question: how large are the house's rooms and how do its files lean on each other, read
from the source alone (nothing is imported)? Answer: what `python -m evaluation.probes.house_stats` prints today;
the one figure that must stay at zero, module-level import cycles between files, is asserted by
tests/test_imports.py through `import_cycles`. Feeds docs/house.md, "The import rule".

- lines per module, the largest five;
- functions (and methods) longer than `LONG_FUNCTION_LINES`, from `def` to their last line;
- arguments of public functions (names without a leading underscore, `self`/`cls` not counted): the most, and
  how many take more than `MANY_ARGUMENTS`;
- cycles of imports between files: of module-level imports (what `tests/test_imports.py` refuses), and of all
  imports, lazy ones inside functions included (a lazy import can hide a cycle of ideas, not of loading).
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PACKAGES = ("jsa_retrieval", "training", "indexing", "evaluation")
ROOT = Path(__file__).resolve().parents[2]
LONG_FUNCTION_LINES = 60
MANY_ARGUMENTS = 8


@dataclass
class FunctionShape:
    module: str
    name: str
    lines: int
    arguments: int
    public: bool


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the packages."""
    files = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def function_shapes(module: str, path: Path) -> list[FunctionShape]:
    shapes = []
    for name, node in _functions(ast.parse(path.read_text(), filename=str(path))):
        args = node.args
        names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
        names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
        count = len([n for n in names if n not in ("self", "cls")])
        public = not any(part.startswith("_") for part in name.split(".")) or name.endswith("__init__")
        shapes.append(FunctionShape(module, name, node.end_lineno - node.lineno + 1, count, public))
    return shapes


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported: its body, module-level if/try blocks included,
    `if TYPE_CHECKING:` blocks and function/class bodies excluded."""
    pending = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.With):
            pending += node.body


def module_imports(module: str, path: Path, known: set[str], lazy: bool = False) -> set[str]:
    """Modules of the house that `module` imports at module level, or anywhere with `lazy` (`from pkg import sub`
    counts as `pkg.sub` when `sub` is a module, else as `pkg`)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    statements = ([node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))] if lazy
                  else _module_level_imports(tree))
    found = set()
    for node in statements:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a non-module attribute path
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_cycles(root: Path = ROOT, lazy: bool = False) -> list[list[str]]:
    """Strongly connected groups (more than one file) of the module-level import graph (with `lazy`: of every
    import), each sorted."""
    files = module_files(root)
    graph = {module: module_imports(module, path, set(files), lazy) for module, path in files.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
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
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(groups)


def report(root: Path = ROOT) -> str:
    files = module_files(root)
    lines = {module: len(path.read_text().splitlines()) for module, path in files.items()}
    shapes = [shape for module, path in files.items() for shape in function_shapes(module, path)]
    long = sorted((s for s in shapes if s.lines > LONG_FUNCTION_LINES), key=lambda s: -s.lines)
    public = [s for s in shapes if s.public]
    widest = max(public, key=lambda s: s.arguments)
    many = sorted((s for s in public if s.arguments > MANY_ARGUMENTS), key=lambda s: -s.arguments)
    cycles = import_cycles(root)
    out = [f"{len(files)} modules, {sum(lines.values()):,} lines, {len(shapes)} functions", "",
           "largest modules:"]
    out += [f"  {count:5d}  {module}" for module, count in sorted(lines.items(), key=lambda kv: -kv[1])[:5]]
    out += ["", f"functions over {LONG_FUNCTION_LINES} lines: {len(long)}"]
    out += [f"  {s.lines:5d}  {s.module}.{s.name}" for s in long]
    out += ["", f"arguments per public function: max {widest.arguments} ({widest.module}.{widest.name}); "
                f"{len(many)} over {MANY_ARGUMENTS}"]
    out += [f"  {s.arguments:5d}  {s.module}.{s.name}" for s in many]
    out += ["", f"import cycles between files (module level): {len(cycles)}"]
    out += ["  " + " <-> ".join(group) for group in cycles]
    lazy_cycles = import_cycles(root, lazy=True)
    out += [f"import cycles counting lazy imports inside functions: {len(lazy_cycles)}"]
    out += ["  " + " <-> ".join(group) for group in lazy_cycles]
    return "\n".join(out)


if __name__ == "__main__":
    print(report())
