"""The house rule (docs/house.md, "The import rule"): `jsa_retrieval` imports none of the other packages,
`training` and `indexing` import only `jsa_retrieval` (neither the other), `evaluation` may import them all.

Every module's imports are read from its source (function-level imports too), so a lazy import cannot hide a
dependency that runs backwards. Only the CLI (`jsa_retrieval/cli/`) reaches every package, lazily. No two
files import each other at module level (evaluation.probes.house_stats finds the cycles).
"""
from __future__ import annotations

import ast
from pathlib import Path

NEVER_IMPORTS = {
    "jsa_retrieval": {"training", "indexing", "evaluation"},
    "training": {"indexing", "evaluation"},
    "indexing": {"training", "evaluation"},
    "evaluation": set(),
}
ROOT = Path(__file__).resolve().parents[1]
# the CLI and the package front door (jsa_retrieval.Engine) reach later packages, lazily
FRONT_DOORS = {"jsa_retrieval/__main__.py", "jsa_retrieval/__init__.py"}
CLI = "jsa_retrieval/cli/"


def imported_packages(path: Path) -> set[str]:
    """Top-level names of this project's packages that `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(NEVER_IMPORTS)


def test_no_module_imports_a_package_its_room_never_imports():
    wrong = []
    for package, forbidden in NEVER_IMPORTS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in FRONT_DOORS or relative.startswith(CLI):
                continue
            for target in sorted(imported_packages(path) & forbidden):
                wrong.append(f"{relative} imports {target}")
    assert not wrong, "imports against the house's rooms (docs/house.md): " + "; ".join(wrong)


def test_the_walk_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from evaluation.metrics import ciou\n    import indexing.store\n")
    assert imported_packages(module) == {"evaluation", "indexing"}


def test_no_two_files_import_each_other_at_module_level():
    from evaluation.probes.house_stats import import_cycles

    assert import_cycles(ROOT) == [], "module-level import cycles between files"


def test_the_cycle_finder_sees_a_cycle(tmp_path):
    from evaluation.probes.house_stats import import_cycles

    package = tmp_path / "jsa_retrieval"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import g\n")
    (package / "b.py").write_text("def g():\n    from .a import f\n")
    assert import_cycles(tmp_path) == []
    assert import_cycles(tmp_path, lazy=True) == [["jsa_retrieval.a", "jsa_retrieval.b"]]
    (package / "b.py").write_text("from jsa_retrieval import a\n")
    assert import_cycles(tmp_path) == [["jsa_retrieval.a", "jsa_retrieval.b"]]


def test_tests_share_helpers_through_helpers_or_conftest_not_each_other():
    tests = ROOT / "tests"
    test_modules = {path.stem for path in tests.glob("test_*.py")}
    wrong = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            wrong += [f"{path.name} imports {name}" for name in names if name.split(".")[0] in test_modules]
    assert not wrong, "tests import each other (move the shared code to tests/helpers.py): " + "; ".join(wrong)
