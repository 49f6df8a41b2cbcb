"""The layer rule of DESIGN.md: imports inside the package only point down.

``ops <- rollout <- memory <- lm <- train <- sleep <- tasks <- cli``: a module may import from its
own layer or a lower one. The test parses every module of ``python/sleepcore`` and ``kernels/``
(no import is executed) and fails on an upward import, naming the file and the module.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Each top-level part of the package and its layer (0 lowest). Base helpers sit with the ops.
LAYERS = {
    "_core": 0, "_build_info": 0, "validation": 0, "configuration": 0, "kernels": 0, "reference": 0, "ops": 0,
    "losses": 0,
    "rollout": 1,
    "memory": 2,
    "lm": 3, "models": 3,
    "train": 4, "distributed": 4,
    "sleep": 5,
    "tasks": 6,
    "cli": 7, "benchmarks": 7, "integrations": 7, "__main__": 7, "__init__": 7,
}


def _modules():
    package = ROOT / "python" / "sleepcore"
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        yield path, parts[0]
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        yield path, "kernels"


def _imported_parts(path: Path):
    """Top-level sleepcore parts imported by ``path`` (absolute ``sleepcore.x`` imports)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names] \
                if node.module == "sleepcore" else [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "sleepcore" and len(parts) > 1:
                yield node.lineno, parts[1]


def test_every_part_has_a_layer():
    missing = sorted({part for _, part in _modules()} - set(LAYERS))
    assert not missing, f"give these parts of the package a layer in LAYERS: {missing}"


def test_imports_point_down():
    upward = []
    for path, part in _modules():
        for line, imported in _imported_parts(path):
            if imported in LAYERS and LAYERS[imported] > LAYERS[part]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({part}, layer {LAYERS[part]}) imports "
                              f"sleepcore.{imported} (layer {LAYERS[imported]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_rule_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from sleepcore.sleep import Sleeper\n")
    assert [part for _, part in _imported_parts(bad)] == ["sleep"]



def test_the_kernels_folder_never_shadows_another_kernels_package(tmp_path):
    # kernels/ is a namespace package (no __init__.py): with the checkout first on sys.path (python -m
    # from its root), `import kernels` still finds a regular package of that name installed later on the
    # path, as Hugging Face's `kernels` is beside transformers >= 5.25
    installed = tmp_path / "site" / "kernels"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(tmp_path / 'site')!r}]; "
            "import kernels; print(kernels.__file__)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert found.stdout.strip() == str(installed / "__init__.py")
