"""Benchmark suites: methods (recipes or peer baselines) x tasks x K x seeds.

A suite file::

    name: fewshot
    data_root: ../shared/data         # relative to the current folder (or --data-root); a folder per task
    tasks: [sst2, subj, trec, rte, mrpc, cola]
    k: [8, 16]                       # examples per class; `full` (e.g. k: [16, full]) = the whole task folder
    seeds: [13, 21, 42, 87, 100]
    baseline: vanilla                # the method every other is compared with in the report
    methods:
      - {name: majority, peer: majority}
      - {name: linear_probe, peer: linear_probe}
      - {name: setfit, peer: setfit}
      - {name: setfit_mpnet, peer: setfit, backbone: mpnet}
      - {name: setfit_distill, peer: setfit_distill, backbone: minilm, teacher_backbone: mpnet}
      - {name: vanilla, recipe: baseline}
      - {name: llrd, recipe: llrd, set: ["techniques.0.decay=0.8"]}
      - {name: vanilla_mpnet, recipe: baseline, set: ["model.backbone=mpnet"]}

Method and task names become folder names in the bench folder, so they are checked like any other
field (see ``layout.name_problem``); the shipped suites are in ``plmtune/bench/suites``.

``backbone`` (a peer's sentence encoder, ``plmtune peer --backbone``; minilm when not given) and
``teacher_backbone`` (setfit_distill's teacher, ``--teacher-backbone``; mpnet when not given) are
for peer methods only: a recipe names its backbone with ``set: ["model.backbone=..."]``. They
enter the run key only when given, so the runs of a suite written before them are still done.

K is a positive integer (K examples per class for train and for dev, drawn per seed by
``plmtune data fewshot`` into ``BENCH/data/TASK/K-SEED``) or ``full``: the runs read the task
folder itself (by path, nothing is copied) with its own train, dev and test files, and the seed
is only the training seed. Runs of ``full`` are labelled ``K=full`` and live in
``runs/TASK/kfull/METHOD/seed-S``. A ``full`` task folder must have a train and a test file
(the report compares test metrics), checked when the suite is read; GLUE-style folders whose
labelled evaluation set is ``dev`` (sst2, rte, cola) and single-file ones (subj's ``all.jsonl``)
are refused with how to make one. Without a dev file the runs are still made, but nothing is
selected on dev: a recipe trains its ``train.epochs`` and keeps the last epoch (no early
stopping or best-epoch choice), and linear_probe keeps its first C.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import find_split_file
from ..errors import PlmtuneError, RecipeError, suggest
from ..loading import load_recipe
from ..safe_yaml import YamlProblem, load_yaml
from .layout import FULL, data_dir, name_problem, run_dir
from .peers import PEERS

# The shipped suites live in the package so that a plain (non-editable) install has them;
# benchmarks/suites in the repository is a link to this folder.
SUITES_DIR = Path(__file__).resolve().parent / "suites"


@dataclass(frozen=True)
class Method:
    name: str
    recipe: str | None = None
    peer: str | None = None
    set: tuple[str, ...] = ()
    backbone: str | None = None  # a peer's --backbone (None: the peer's default)
    teacher_backbone: str | None = None  # setfit_distill's --teacher-backbone

    def identity(self) -> dict[str, Any]:
        """What defines the method's behaviour (for the run key): the resolved recipe or the peer.

        A peer's backbones are in it only where the suite names them, so a peer written without
        them keeps the key it had before suites could name them."""
        if self.peer:
            return {"peer": self.peer, **({"backbone": self.backbone} if self.backbone else {}),
                    **({"teacher_backbone": self.teacher_backbone} if self.teacher_backbone else {})}
        return {"recipe": load_recipe(self.recipe, list(self.set)).to_dict()}


@dataclass(frozen=True)
class RunSpec:
    method: Method
    task: str
    k: int | str  # a positive int, or FULL
    seed: int
    data_dir: Path  # BENCH/data/TASK/K-SEED, or for FULL the task folder itself
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
    k: tuple[int | str, ...]
    seeds: tuple[int, ...]
    methods: tuple[Method, ...]
    baseline: str
    extra: dict[str, Any] = field(default_factory=dict)

    def expand(self, out: Path) -> list[RunSpec]:
        return [RunSpec(m, task, k, seed, self.data_root / task if k == FULL else data_dir(out, task, k, seed),
                        run_dir(out, task, k, m.name, seed))
                for task in self.tasks for k in self.k for m in self.methods for seed in self.seeds]


KEYS = ("name", "data_root", "tasks", "k", "seeds", "methods", "baseline")
METHOD_KEYS = ("name", "recipe", "peer", "set", "backbone", "teacher_backbone")


def load_suite(path: str | Path, data_root: str | Path | None = None) -> Suite:
    """Read and check a suite file (or the name of a shipped suite) before anything is written.

    Every field is checked like a recipe field, with one paragraph naming the file and the field.
    A relative ``data_root`` is relative to the suite file, except in the shipped suites, which
    cannot know where an installed plmtune's user keeps data: theirs is relative to the current
    folder (the repository root in the README). `data_root`, if given (``--data-root``), wins.
    """
    path = _find(Path(path))
    raw = _read_mapping(path)

    def fail(message: str) -> RecipeError:
        return RecipeError(f"Suite {path}: {message}")

    for key in raw:
        if key not in KEYS:
            raise fail(f"unknown key '{key}'.{suggest(str(key), KEYS)}")
    for key in ("tasks", "k", "seeds", "methods"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise fail(f"'{key}' must be a non-empty list, got {raw.get(key)!r}.")
    for key in ("name", "data_root", "baseline"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key].strip()):
            raise fail(f"{key} must be a string, got {raw[key]!r}.")
    tasks = _names(raw["tasks"], "tasks", fail)
    k = _k_values(raw["k"], fail)
    seeds = _integers(raw["seeds"], "seeds", 0, "a non-negative integer", fail)
    methods = tuple(_method(i, entry, fail) for i, entry in enumerate(raw["methods"]))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise fail(f"method names must be unique, got {names}.")
    baseline = raw.get("baseline", names[0])
    if baseline not in names:
        raise fail(f"baseline '{baseline}' is not a method.{suggest(baseline, names)}")
    if data_root is not None:
        root, origin = Path(data_root).resolve(), "--data-root"
    elif path.parent == SUITES_DIR:
        root, origin = Path(raw.get("data_root", ".")).resolve(), "data_root (relative to the current folder)"
    else:
        root, origin = (path.parent / raw.get("data_root", ".")).resolve(), "data_root"
    for i, task in enumerate(tasks):
        if not (root / task).is_dir():
            raise fail(f"tasks[{i}]: task folder {root / task} does not exist (below {origin} {root}). "
                       "Pass --data-root DIR, the folder that holds the task folders, to read them elsewhere.")
        if FULL in k:
            _check_full_task(root / task, f"tasks[{i}]", fail)
    return Suite(raw.get("name", path.stem), path, root, tasks, k, seeds, methods, baseline)


def _find(path: Path) -> Path:
    if path.is_file():
        return path.resolve()
    shipped = SUITES_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if len(path.parts) == 1 and shipped.is_file():
        return shipped.resolve()
    names = [p.stem for p in SUITES_DIR.glob("*.yaml")]
    raise RecipeError(f"Suite {path} is neither a file nor a shipped suite.{suggest(path.stem, names)}")


def _read_mapping(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"Suite {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}).") \
            from None
    try:
        raw = load_yaml(text)
    except YamlProblem as err:
        raise RecipeError(f"Suite {path} is not valid YAML: {err.problem}{err.where}.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"Suite {path} must be a YAML mapping at the top level, got a {type(raw).__name__}.")
    return raw


def _names(values: list, field: str, fail) -> tuple[str, ...]:
    for i, value in enumerate(values):
        problem = name_problem(value)
        if problem:
            raise fail(f"{field}[{i}] {problem}.")
    _unique(values, field, fail)
    return tuple(values)


def _integers(values: list, field: str, lowest: int, kind: str, fail) -> tuple[int, ...]:
    for i, value in enumerate(values):
        # bool is an int in Python, and YAML reads `yes` as True: refuse it rather than run K=1.
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise fail(f"{field}[{i}] must be {kind}, got {value!r}.")
    _unique(values, field, fail)
    return tuple(values)


def _k_values(values: list, fail) -> tuple[int | str, ...]:
    for i, value in enumerate(values):
        if value == FULL:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            close = isinstance(value, str) and suggest(value, [FULL]).startswith(" Did")
            hint = f" Did you mean '{FULL}'?" if close else ""
            raise fail(f"k[{i}] must be a positive integer, got {value!r} (or {FULL}: the task folder's own "
                       f"train, dev and test files instead of K examples per class).{hint}")
    _unique(values, "k", fail)
    return tuple(values)


def _check_full_task(folder: Path, where: str, fail) -> None:
    """A K=full run reads the task folder as it is: it needs a train and a (labelled) test file."""
    try:
        files = {split: find_split_file(folder, split) for split in ("train", "test")}
    except PlmtuneError as err:  # two files for one split
        raise fail(f"{where} (k: {FULL}): {err}") from None
    if files["train"] is None:
        single = (" It is a single-file dataset: use an integer K (the few-shot splits carve a test set from it), "
                  "or make a folder with train and test files.") if any(folder.glob("all.*")) else ""
        raise fail(f"{where} (k: {FULL}): task folder {folder} has no train file (train.jsonl, .csv or .tsv); "
                   f"a K={FULL} run trains on the task folder's own train file.{single}")
    if files["test"] is None:
        dev = find_split_file(folder, "dev")
        hint = (f" Its labelled evaluation set is {dev.name}: the few-shot K uses it as test, but a K={FULL} run "
                f"would select on it. Make a folder with its train file and {dev.name} as test{dev.suffix} "
                "(links will do), and no dev, to run on it.") if dev else ""
        raise fail(f"{where} (k: {FULL}): task folder {folder} has no test file (test.jsonl, .csv or .tsv); "
                   f"a K={FULL} run tests on the task folder's own test file, and the report compares test "
                   f"metrics.{hint}")


def _unique(values: list, field: str, fail) -> None:
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        raise fail(f"{field} lists {', '.join(twice)} more than once (the runs would share a folder).")


def _method(i: int, entry: Any, fail) -> Method:
    where = f"methods[{i}]"
    if not isinstance(entry, dict):
        raise fail(f"{where} must be a mapping with a name and a recipe or a peer, got {entry!r}.")
    unknown = sorted(str(key) for key in entry if key not in METHOD_KEYS)
    if unknown:
        raise fail(f"{where} has unknown key(s) {unknown}.{suggest(unknown[0], METHOD_KEYS)}")
    if "name" not in entry or ("recipe" in entry) == ("peer" in entry):
        raise fail(f"{where} needs a name and exactly one of recipe or peer.")
    problem = name_problem(entry["name"])
    if problem:
        raise fail(f"{where}.name {problem}.")
    for key in ("recipe", "peer"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            raise fail(f"{where}.{key} must be a string, got {entry[key]!r}.")
    if "peer" in entry and entry["peer"] not in PEERS:
        raise fail(f"{where}: unknown peer '{entry['peer']}'.{suggest(entry['peer'], PEERS)}")
    overrides = entry.get("set", [])
    if not isinstance(overrides, list):
        raise fail(f"{where}.set must be a list of overrides, e.g. set: [\"train.epochs=1\"], got {overrides!r}.")
    for j, override in enumerate(overrides):
        if not isinstance(override, str):
            raise fail(f"{where}.set[{j}] must be an override string like \"train.epochs=1\", got {override!r}.")
    for key in ("backbone", "teacher_backbone"):
        if key not in entry:
            continue
        if "peer" not in entry:
            raise fail(f"{where}.{key} is for peer methods only (it is passed to 'plmtune peer --"
                       f"{key.replace('_', '-')}'); a recipe method names its backbone with an override, e.g. "
                       f"set: [\"model.backbone={entry[key]}\"].")
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise fail(f"{where}.{key} must be a non-empty string (a backbone alias such as mpnet, a local model "
                       f"folder or a hub name), got {entry[key]!r}.")
    if "backbone" in entry and entry["peer"] == "majority":
        raise fail(f"{where}.backbone: peer 'majority' has no backbone (it predicts the most frequent class); "
                   "drop backbone.")
    if "teacher_backbone" in entry and entry["peer"] != "setfit_distill":
        raise fail(f"{where}.teacher_backbone: only peer 'setfit_distill' has a teacher; peer '{entry['peer']}' "
                   "takes backbone only.")
    method = Method(entry["name"], entry.get("recipe"), entry.get("peer"), tuple(overrides),
                    entry.get("backbone"), entry.get("teacher_backbone"))
    if method.recipe:
        try:
            method.identity()  # validates the recipe and its overrides now, before any run
        except RecipeError as err:
            raise fail(f"{where} ('{method.name}'): {err}") from None
    return method


def file_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def data_files(spec: RunSpec) -> list[Path]:
    """The data files a run's key hashes: the few-shot splits (``unlabeled.jsonl`` follows from them and
    the seed), or for K=full the task folder's split files as ``load_task`` finds them, and its
    ``unlabeled.jsonl`` where there is one (nothing derives it there)."""
    if spec.k != FULL:
        return [p for p in spec.data_dir.glob("*.jsonl") if p.name != "unlabeled.jsonl"]
    files = [find_split_file(spec.data_dir, split) for split in ("train", "dev", "test")]
    return [p for p in [*files, spec.data_dir / "unlabeled.jsonl"] if p is not None and p.is_file()]


@functools.lru_cache(maxsize=64)
def _cached_digest(files: tuple[tuple[str, int, int], ...]) -> str:
    return file_digest([Path(name) for name, _, _ in files])


def run_key(spec: RunSpec) -> str:
    """Hash of what decides a run's result: the resolved method, the data files and the seed."""
    files = data_files(spec)
    # A full task folder is hashed once per bench, not once per method and seed (sst2's train is 5 MB).
    digest = _cached_digest(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)) \
        if spec.k == FULL else file_digest(files)
    payload = json.dumps({"method": spec.method.identity(), "data": digest, "seed": spec.seed},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
