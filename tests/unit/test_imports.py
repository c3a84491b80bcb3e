"""Imports only go down (../shared/DESIGN.md): cli → report, train → infer → models → data;
metrics uses only data. Inference never imports training, reporting or the CLI, at import
time nor inside a function (the old ``infer`` ↔ ``train`` circle)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import glandseg

PKG = Path(glandseg.__file__).parent

#: package → the glandseg packages it may import (besides itself and ``glandseg``).
ALLOWED = {
    "data": set(),
    "metrics": {"data"},
    "models": {"data"},
    "infer": {"models", "data", "metrics"},  # metrics: the shared grid search, for tuning
}
FORBIDDEN_FOR_INFERENCE = ("glandseg.train", "glandseg.report", "glandseg.cli")


def _modules(package: str) -> list[str]:
    return sorted(
        f"glandseg.{package}" + ("" if p.stem == "__init__" else f".{p.stem}")
        for p in (PKG / package).glob("*.py")
    )


def _glandseg_imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every glandseg module that ``path`` imports, anywhere in the file (functions too)."""
    out = []
    pkg_parts = module.split(".")[:-1] if path.stem != "__init__" else module.split(".")
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return [(ln, n) for ln, n in out if n == "glandseg" or n.startswith("glandseg.")]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_only_go_down(package: str) -> None:
    bad = []
    for module in _modules(package):
        path = PKG / package / ("__init__.py" if module.count(".") == 1 else
                                f"{module.rsplit('.', 1)[1]}.py")
        for line, name in _glandseg_imports(path, module):
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else None
            if target in (None, package) or target in ALLOWED[package]:
                continue
            bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {name}")
    assert not bad, "imports going up:\n" + "\n".join(bad)


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    """Control: the old Predictor.from_name imported training inside a method."""
    p = tmp_path / "predictor.py"
    p.write_text("def f():\n    from glandseg.train.checkpoint import load_model\n"
                 "from ..report import outputs\n")
    found = {n for _, n in _glandseg_imports(p, "glandseg.infer.predictor")}
    assert found == {"glandseg.train.checkpoint", "glandseg.report"}


_PROBE = """
import importlib, json, sys
for m in sys.argv[1].split(","):
    importlib.import_module(m)
print(json.dumps(sorted(m for m in sys.modules if m.startswith(tuple(sys.argv[2:])))))
"""


def _probe_fresh(groups: list[list[str]]) -> dict:
    """Import each group of modules, in order, in its own fresh interpreter (in parallel);
    → ``{group: error or the forbidden modules that got imported}`` for the bad ones."""
    procs = {",".join(g): subprocess.Popen(
        [sys.executable, "-c", _PROBE, ",".join(g), *FORBIDDEN_FOR_INFERENCE],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for g in groups}
    bad = {}
    for m, p in procs.items():
        out, err = p.communicate(timeout=300)
        if p.returncode != 0:
            bad[m] = err.strip().splitlines()[-1:]
        elif json.loads(out):
            bad[m] = json.loads(out)
    return bad


def test_inference_packages_in_a_fresh_interpreter() -> None:
    """Every module of glandseg.infer (then of glandseg.models) in one fresh process."""
    assert not _probe_fresh([_modules("infer"), _modules("models")])


@pytest.mark.slow
def test_each_inference_module_alone_in_a_fresh_interpreter() -> None:
    """Import order matters for cycles: each module first, in its own process (one
    torch import each: ~40 s of CPU)."""
    assert not _probe_fresh([[m] for m in _modules("infer") + _modules("models")])


_RUN = """
import json, sys
import numpy as np
from glandseg import Predictor
pred = Predictor.from_name(sys.argv[1], device="cpu")
labels = pred.predict(np.zeros((40, 48, 3), np.uint8))
pred.postprocess(pred.predict_proba(np.zeros((40, 48, 3), np.uint8)), {"min_area": 5})
print(json.dumps(sorted(m for m in sys.modules if m.startswith(tuple(sys.argv[2:])))))
"""


def test_loading_and_predicting_never_imports_training(tmp_path: Path) -> None:
    """At run time too: load a run folder, predict, post-process (lazy imports included)."""
    import torch
    from safetensors.torch import save_file

    from glandseg.models import registry

    cfg = registry.default_config("unet")
    cfg["model_args"]["width"] = 4
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = registry.build_model(cfg, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "best.safetensors"))
    del model, torch
    out = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path), *FORBIDDEN_FOR_INFERENCE],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
