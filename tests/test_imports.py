"""The house rule: imports run one way, jsa_retrieval <- training <- indexing <- serving <- evaluation.

Every module's imports are read from its source (function-level imports too), so a lazy import cannot hide a
dependency that runs backwards. Only the CLI (`jsa_retrieval/cli.py`) reaches every package, lazily.
"""
from __future__ import annotations

import ast
from pathlib import Path

ORDER = ("jsa_retrieval", "training", "indexing", "serving", "evaluation")
ROOT = Path(__file__).resolve().parents[1]
# the CLI and the package front door (jsa_retrieval.Engine) reach later packages, lazily
FRONT_DOORS = {"jsa_retrieval/cli.py", "jsa_retrieval/__main__.py", "jsa_retrieval/__init__.py"}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of this project's packages that `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(ORDER)


def test_every_module_imports_only_its_own_package_or_those_before_it():
    backwards = []
    for package in ORDER:
        allowed = set(ORDER[:ORDER.index(package) + 1])
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in FRONT_DOORS:
                continue
            for target in sorted(imported_packages(path) - allowed):
                backwards.append(f"{relative} imports {target}")
    assert not backwards, "imports against jsa_retrieval <- training <- indexing <- serving <- evaluation: " + "; ".join(backwards)


def test_the_walk_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from evaluation.metrics import ciou\n    import indexing.store\n")
    assert imported_packages(module) == {"evaluation", "indexing"}
