"""The package's layers: every module imports only modules below it, no private name crosses a module boundary, there
is no import cycle, and the notebooks sort in the order of the modules they export.

The order is declared here, lowest first; a module may import any module before it in ORDER and none after it. Imports
are read with `ast` from the generated sources (function-level imports included), so a lazy import cannot hide an
upward dependency. `layer_violations` is a plain function so that the check itself can be tested on a made-up package.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "diffula"

# lowest first: each module may import only modules listed before it
ORDER = [
    "case",           # the Case and the shared vocabulary (no torch)
    "files",          # atomic writes, JSON, figures, output folders (no torch)
    "data",           # users, images, the data folder, devices
    "formulation",    # the FL threat model: ResNet-18, client gradient, label recovery, distances
    "synthfaces",     # the SynthFaces users
    "synthevals",     # their evaluators
    "defences",       # what the server observes: FedSGD, FedAvg, DP-SGD, pruning, aggregation
    "adm",            # guided-diffusion checkpoints -> diffusers (a converter only)
    "prior",          # the DDPM prior and its loader
    "synthprior",     # the SynthFaces prior's training
    "generator",      # the GIAS generator's training and loading
    "schedules",      # tau, zeta, the layer window
    "attack_core",    # what every attack shares: result, budget, step loop, restarts
    "attack",         # DiffULA (Algorithm 1)
    "baselines",      # Inverting Gradients, GIAS
    "retrieval",      # the signal ceiling
    "dps",            # the DPS variant: diffusion posterior sampling with ∇w as the measurement
    "evaluation",     # metrics, disambiguation, face semantics
    "deepface_backend",  # DeepFace behind the evaluation's interface
    "pipeline",       # the case runner
    "defence_study",  # the defence sweep: the leak against defence strength
    "analysis",       # the study: figures, tables
    "fallback",       # the fall-back to the prior's mode: how often and when the attack loses its user
    "live",           # the explorer's run logic (no widgets)
    "explorer",       # the ipywidgets app
    "cli",            # the console script
]
GENERATED = {"__init__", "_modidx"}


def imports(source: str, package: str = "diffula") -> list[tuple[str, list[str], int]]:
    "Every import of a sibling module in `source`: (module, imported names, line)."
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1: target = mod.split(".")[0] if mod else None
            elif node.level == 0 and mod.split(".")[0] == package and "." in mod: target = mod.split(".")[1]
            elif node.level == 0 and mod == package: target = None
            else: continue
            names = [a.name for a in node.names]
            if target is None: out += [(n, [], node.lineno) for n in names]  # from . import x / from diffula import x
            else: out.append((target, names, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == package and len(parts) > 1: out.append((parts[1], [], node.lineno))
    return out


def layer_violations(sources: dict[str, str], order: list[str]) -> list[str]:
    "Upward or sideways-private imports and cycles among `sources` (module -> source), against `order`."
    rank = {m: i for i, m in enumerate(order)}
    problems, graph = [], {m: set() for m in sources}
    for m, src in sources.items():
        if m not in rank: problems.append(f"{m}: not in ORDER (declare where it sits)"); continue
        for target, names, line in imports(src):
            if target == m: continue
            if target not in rank: problems.append(f"{m}:{line} imports unknown module {target}"); continue
            graph[m].add(target)
            if rank[target] > rank[m]: problems.append(f"{m}:{line} imports {target}, a later layer")
            private = [n for n in names if n.startswith("_")]
            if private: problems.append(f"{m}:{line} imports private {private} from {target}")
    state = {}
    def visit(m, path):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1: problems.append("cycle: " + " -> ".join(path[path.index(t):] + [t]))
            elif t in graph and not state.get(t): visit(t, path + [t])
        state[m] = 2
    for m in sorted(graph):
        if not state.get(m): visit(m, [m])
    return problems


def package_sources() -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(PKG.glob("*.py")) if p.stem not in GENERATED}


def test_every_module_imports_only_lower_layers_and_no_private_names():
    assert layer_violations(package_sources(), ORDER) == []


def test_order_names_exactly_the_modules():
    assert sorted(ORDER) == sorted(package_sources()), "declare new modules in ORDER (and drop removed ones)"


def test_notebook_files_sort_in_dependency_order():
    "A module's notebook sorts after the notebooks of every module it imports: reading nbs/ in order never looks ahead."
    nb_of = {}
    for m, src in package_sources().items():
        found = re.search(r"File to edit: \.\./nbs/(\S+?\.ipynb)", src)
        assert found, f"{m}.py names no notebook"
        nb_of[m] = found.group(1)
    late = [f"{nb_of[m]} ({m}) imports {t} from the later {nb_of[t]}"
            for m, src in package_sources().items() for t, _, _ in imports(src)
            if t in nb_of and t != m and nb_of[t] > nb_of[m]]
    assert late == []


FAKE = {"low": "import torch\n", "mid": "from .low import helper\n", "high": "from .mid import thing\n"}


def test_the_check_catches_an_upward_import_a_cycle_and_a_private_name():
    order = ["low", "mid", "high"]
    assert layer_violations(FAKE, order) == []
    cyc = {**FAKE, "low": "def f():\n    from diffula.high import thing  # a lazy import is still an import\n"}
    found = layer_violations(cyc, order)
    assert any("imports high, a later layer" in p for p in found)
    assert any(p.startswith("cycle: ") and "low" in p and "high" in p for p in found)
    priv = {**FAKE, "high": "from .mid import _secret\n"}
    assert layer_violations(priv, order) == ["high:1 imports private ['_secret'] from mid"]
    assert layer_violations({**FAKE, "new": ""}, order) == ["new: not in ORDER (declare where it sits)"]


@pytest.mark.parametrize("src, expected", [
    ("from .attack import AttackConfig, _run_once", [("attack", ["AttackConfig", "_run_once"], 1)]),
    ("from diffula.pipeline import run_case", [("pipeline", ["run_case"], 1)]),
    ("import diffula.cli as cli", [("cli", [], 1)]),
    ("from diffula import explorer", [("explorer", [], 1)]),
    ("import numpy as np\nfrom torch import nn", []),
])
def test_imports_are_read_in_every_spelling(src, expected):
    assert imports(src) == expected
