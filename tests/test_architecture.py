"""The package map of docs/architecture.md, enforced: engines/ in MONAI's tiers, each importing only the tiers
above it (metrics <- handlers <- inference, training), and engines never importing the bundle tooling."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINES = Path(__file__).resolve().parents[1] / "monai_ms" / "engines"
TIERS = ["metrics", "handlers", "inference", "training"]
ALLOWED = {  # what each tier may import from monai_ms.engines
    "metrics": {"metrics"},
    "handlers": {"metrics", "handlers"},
    "inference": {"metrics", "handlers", "inference"},
    "training": {"metrics", "handlers", "inference", "training"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_engines_has_only_the_four_tiers_and_its_api():
    assert sorted(p.name for p in ENGINES.iterdir() if p.suffix == ".py") == ["__init__.py"]
    assert sorted(p.name for p in ENGINES.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(TIERS)


def test_each_tier_imports_only_the_tiers_above_it_and_never_the_bundle_tooling():
    problems = []
    for tier in TIERS:
        for path in sorted((ENGINES / tier).glob("*.py")):
            for module in _imports(path):
                parts = module.split(".")
                if parts[:2] == ["monai_ms", "bundle"]:
                    problems.append(f"{tier}/{path.name} imports {module}")
                if parts[:2] == ["monai_ms", "engines"] and (len(parts) < 3 or parts[2] not in ALLOWED[tier]):
                    problems.append(f"{tier}/{path.name} imports {module}")
    assert problems == []


def test_every_public_name_of_engines_lives_in_a_tier():
    import sys

    import monai_ms.engines as engines

    def home(name: str) -> str:
        # functions and classes know their module; a constant's home is the tier module that defines it
        value = getattr(engines, name)
        if hasattr(value, "__module__") and not isinstance(value, str):
            return value.__module__
        return next(m for m, module in sys.modules.items() if m.startswith("monai_ms.engines.") and name in vars(module))

    homes = {name: home(name) for name in engines.__all__}
    assert {name: where for name, where in homes.items() if where.split(".")[2] not in TIERS} == {}


def test_tests_mirror_the_package():
    """tests/<package>/ for each subpackage of monai_ms (plus benchmarks/); only cross-cutting checks at the top."""
    tests = Path(__file__).resolve().parent
    packages = {p.name for p in (tests.parent / "monai_ms").iterdir() if (p / "__init__.py").is_file()}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders <= packages | {"benchmarks"}, f"test folders that are no monai_ms subpackage: {folders - packages}"
    assert sorted(p.name for p in tests.glob("test_*.py")) == ["test_architecture.py", "test_errors.py", "test_lint.py"]
