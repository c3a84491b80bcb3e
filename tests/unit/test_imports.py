"""Imports only go down (../shared/DESIGN.md), counting imports inside functions:
``data`` < ``models``, ``metrics`` < ``infer`` < ``grade`` < ``report`` < ``engine`` <
``train`` < ``search`` < ``cli`` (``glandseg/__init__``, the public API, excepted); ``report``
writes files and uses only ``data``, ``models`` and ``metrics``; no cycle between modules;
no private (underscore) name imported from another module. Inference never imports
training, reporting or the CLI, at import time nor inside a function."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import glandseg

PKG = Path(glandseg.__file__).parent

#: The floors, lowest first; a package may import its own floor's modules only within itself.
LAYERS = {"data": 0, "models": 1, "metrics": 1, "infer": 2, "grade": 3, "report": 4,
          "engine": 5, "train": 6, "search": 7, "cli": 8}
#: package → the glandseg packages it may import (besides itself and ``glandseg``).
ALLOWED = {pkg: {p for p, f in LAYERS.items() if f < floor} for pkg, floor in LAYERS.items()}
ALLOWED["report"] = {"data", "models", "metrics"}  # report writes files, never runs a model
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


def test_every_package_has_a_floor() -> None:
    """A new package must be placed on a floor (and so be policed)."""
    packages = {p.parent.name for p in PKG.glob("*/*.py")} - {"weights"}
    assert packages <= set(LAYERS), f"packages without a floor: {packages - set(LAYERS)}"


def _all_modules() -> dict[str, Path]:
    """Every module of glandseg (``glandseg.pkg.mod``; a package as ``glandseg.pkg``)."""
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _edges(module: str, path: Path, modules: dict[str, Path]
           ) -> tuple[set[str], list[tuple[int, str, str]]]:
    """``(modules imported, [(line, module, private name)])``: every glandseg module that
    ``path`` imports anywhere (``from pkg import mod`` names the module), and the
    underscore names it imports from another glandseg module."""
    pkg = module.split(".") if path.stem == "__init__" else module.split(".")[:-1]
    targets: set[str] = set()
    private = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        base = (".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
                if node.level else node.module or "")
        for a in node.names:
            full = f"{base}.{a.name}"
            if full in modules:
                targets.add(full)
                continue
            targets.add(base)
            if (a.name.startswith("_") and not a.name.startswith("__") and base != module
                    and base.split(".")[0] == "glandseg"):
                private.append((node.lineno, base, a.name))
    owned = set()
    for t in targets:
        while t and t not in modules:
            t = t.rpartition(".")[0]
        if t.startswith("glandseg.") and t != module:
            owned.add(t)
    return owned, private


def _import_graph() -> dict[str, set[str]]:
    modules = _all_modules()
    return {m: _edges(m, p, modules)[0] for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles a depth-first search of ``graph`` (module → modules it imports) meets."""
    nodes = set(graph)
    color: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        color[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if v not in nodes:
                continue
            if color.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif not color.get(v):
                visit(v)
        stack.pop()
        color[u] = 2

    for n in sorted(nodes):
        if not color.get(n):
            visit(n)
    return found


def test_no_import_cycles() -> None:
    """Package ``__init__`` files, which re-export, are left out (as
    ../shared/tools/check-imports does)."""
    modules = _all_modules()
    graph = {m: deps for m, deps in _import_graph().items() if modules[m].stem != "__init__"}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle_through_a_function_import(tmp_path: Path) -> None:
    """Control: two modules importing each other, one of them inside a function."""
    pkg = tmp_path / "glandseg" / "infer"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("from glandseg.infer.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from glandseg.infer import a\n")
    mods = {"glandseg.infer.a": pkg / "a.py", "glandseg.infer.b": pkg / "b.py"}
    graph = {m: _edges(m, p, mods)[0] for m, p in mods.items()}
    assert graph == {"glandseg.infer.a": {"glandseg.infer.b"},
                     "glandseg.infer.b": {"glandseg.infer.a"}}
    assert _cycles(graph) == [["glandseg.infer.a", "glandseg.infer.b", "glandseg.infer.a"]]
    assert _cycles({"glandseg.infer.a": {"glandseg.infer.b"}, "glandseg.infer.b": set()}) == []


def test_no_private_name_crosses_a_module() -> None:
    modules = _all_modules()
    bad = [f"{p.relative_to(PKG.parent)}:{line} imports {name} from {src}"
           for m, p in modules.items() for line, src, name in _edges(m, p, modules)[1]]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_private_name_check_sees_one(tmp_path: Path) -> None:
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from glandseg.report.batch import _prepare_out, plan_outputs\n")
    mods = {"glandseg.cli.x": p, "glandseg.report.batch": p}
    assert _edges("glandseg.cli.x", p, mods)[1] == [(2, "glandseg.report.batch", "_prepare_out")]


def test_the_shared_checker_passes() -> None:
    """../shared/tools/check-imports (the project's own tool), when it is there."""
    tool = PKG.parent.parent / "shared" / "tools" / "check-imports"
    if not tool.is_file():
        pytest.skip(f"{tool} not found (the project checkout's shared tools)")
    out = subprocess.run([sys.executable, str(tool), str(PKG)], capture_output=True, text=True,
                         cwd=PKG.parent, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


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
