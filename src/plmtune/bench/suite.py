"""Benchmark suites: methods (recipes or peer baselines) x tasks x K x seeds.

A suite file::

    name: fewshot
    data_root: ../../../shared/data   # relative to this file; each task is a folder below it
    tasks: [sst2, subj, trec, rte, mrpc, cola]
    k: [8, 16]
    seeds: [13, 21, 42, 87, 100]
    baseline: vanilla                # the method every other is compared with in the report
    methods:
      - {name: majority, peer: majority}
      - {name: linear_probe, peer: linear_probe}
      - {name: setfit, peer: setfit}
      - {name: vanilla, recipe: baseline}
      - {name: llrd, recipe: llrd, set: ["techniques.0.decay=0.8"]}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import load_recipe
from ..errors import RecipeError, suggest
from .peers import PEERS

SUITES_DIR = Path(__file__).resolve().parents[3] / "benchmarks" / "suites"


@dataclass(frozen=True)
class Method:
    name: str
    recipe: str | None = None
    peer: str | None = None
    set: tuple[str, ...] = ()

    def identity(self) -> dict[str, Any]:
        """What defines the method's behaviour (for the run key): the resolved recipe or the peer."""
        if self.peer:
            return {"peer": self.peer}
        return {"recipe": load_recipe(self.recipe, list(self.set)).to_dict()}


@dataclass(frozen=True)
class RunSpec:
    method: Method
    task: str
    k: int
    seed: int
    data_dir: Path
    out_dir: Path

    @property
    def label(self) -> str:
        return f"{self.task} K={self.k} {self.method.name} seed {self.seed}"


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    data_root: Path
    tasks: tuple[str, ...]
    k: tuple[int, ...]
    seeds: tuple[int, ...]
    methods: tuple[Method, ...]
    baseline: str
    extra: dict[str, Any] = field(default_factory=dict)

    def expand(self, out: Path) -> list[RunSpec]:
        return [RunSpec(m, task, k, seed, out / "data" / task / f"{k}-{seed}",
                        out / "runs" / task / f"k{k}" / m.name / f"seed-{seed}")
                for task in self.tasks for k in self.k for m in self.methods for seed in self.seeds]


KEYS = ("name", "data_root", "tasks", "k", "seeds", "methods", "baseline")


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    if not path.is_file() and (SUITES_DIR / f"{path.name}.yaml").is_file():
        path = SUITES_DIR / f"{path.name}.yaml"
    if not path.is_file():
        raise RecipeError(f"Suite {path} does not exist.")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise RecipeError(f"Suite {path} must be a YAML mapping.")
    for key in raw:
        if key not in KEYS:
            raise RecipeError(f"Suite {path}: unknown key '{key}'.{suggest(str(key), KEYS)}")
    for key in ("tasks", "k", "seeds", "methods"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise RecipeError(f"Suite {path}: '{key}' must be a non-empty list.")
    methods = []
    for i, entry in enumerate(raw["methods"]):
        if not isinstance(entry, dict) or "name" not in entry or ("recipe" in entry) == ("peer" in entry):
            raise RecipeError(f"Suite {path}: methods[{i}] needs a name and exactly one of recipe or peer.")
        unknown = set(entry) - {"name", "recipe", "peer", "set"}
        if unknown:
            raise RecipeError(f"Suite {path}: methods[{i}] has unknown key(s) {sorted(unknown)}.")
        if "peer" in entry and entry["peer"] not in PEERS:
            raise RecipeError(f"Suite {path}: methods[{i}]: unknown peer '{entry['peer']}'."
                              f"{suggest(str(entry['peer']), PEERS)}")
        method = Method(entry["name"], entry.get("recipe"), entry.get("peer"), tuple(entry.get("set", ())))
        if method.recipe:
            method.identity()  # validates the recipe and its overrides now, before any run
        methods.append(method)
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise RecipeError(f"Suite {path}: method names must be unique, got {names}.")
    baseline = raw.get("baseline", names[0])
    if baseline not in names:
        raise RecipeError(f"Suite {path}: baseline '{baseline}' is not a method.{suggest(baseline, names)}")
    root = (path.parent / raw.get("data_root", ".")).resolve()
    for task in raw["tasks"]:
        if not (root / task).is_dir():
            raise RecipeError(f"Suite {path}: task folder {root / task} does not exist.")
    return Suite(raw.get("name", path.stem), path.resolve(), root, tuple(raw["tasks"]), tuple(int(k) for k in raw["k"]),
                 tuple(int(s) for s in raw["seeds"]), tuple(methods), baseline)


def file_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_key(spec: RunSpec) -> str:
    """Hash of what decides a run's result: the resolved method, the data files and the seed."""
    files = [p for p in spec.data_dir.glob("*.jsonl") if p.name != "unlabeled.jsonl"]
    payload = json.dumps({"method": spec.method.identity(), "data": file_digest(files), "seed": spec.seed},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
