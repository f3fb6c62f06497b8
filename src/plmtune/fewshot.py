"""Few-shot splits by the LM-BFF protocol (Gao et al., 2021).

For each seed: K examples per class for train and another, disjoint K per class for dev, both
drawn from the original train split; test is the original test split, or the original dev
split where no labelled test exists. Every other train example goes, without its label, to
``unlabeled.jsonl`` (for self-training and further pre-training).

A dataset with a single file (``all.*``, e.g. SUBJ) first gets a fixed test carve that does not
depend on the few-shot seed: a class-stratified 20% of its rows, at most 2,000 (the size LM-BFF
uses for SUBJ), drawn with ``random.Random(CARVE_SEED)``. The rest is the train pool.

Output: ``OUT/{K}-{seed}/{train,dev,test,unlabeled}.jsonl`` plus ``meta.json``. Everything is
checked before anything is written, and each seed's folder appears whole or not at all.

Output folders are data the user owns, so a re-run replaces ``OUT/{K}-{seed}`` only when plmtune
wrote it: its ``meta.json`` carries ``"written_by": "plmtune data fewshot"`` (or the keys of an
older plmtune) and it holds nothing but the files listed above. A target that is, or holds, the
source folder is refused. Each seed is built in a hidden sibling ``.{K}-{seed}.plmtune-tmp-{pid}-{hex}``
and renamed into place; a run killed with SIGKILL leaves that folder behind, and the next run into
the same OUT removes such folders once their process is gone (and only folders of that pattern,
or of the older ``mkdtemp`` pattern, holding only these files). Folders and files get the modes of
the umask, like any other file the user writes.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from .config import DataConfig
from .data import FORMATS, assign_label_ids, find_split_file, read_rows
from .errors import DataError, PlmtuneError

CARVE_SEED = 20240101
CARVE_SHARE = 0.2
CARVE_MAX = 2000

WRITTEN_BY = "plmtune data fewshot"
OUR_FILES = frozenset({"train.jsonl", "dev.jsonl", "test.jsonl", "unlabeled.jsonl", "meta.json"})
_LEGACY_META_KEYS = {"source", "test_source", "k", "seed", "counts"}  # meta.json before WRITTEN_BY
_TEMP = re.compile(r"\.-?\d+--?\d+\.plmtune-tmp-(?P<pid>\d+)-[0-9a-f]+")
_LEGACY_TEMP = re.compile(r"\.-?\d+--?\d+\.[a-z0-9_]{8}")  # tempfile.mkdtemp names of older versions


def _carve_test(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_class[row["label"]].append(i)
    size = min(CARVE_MAX, int(len(rows) * CARVE_SHARE))
    rng = random.Random(CARVE_SEED)
    chosen: set[int] = set()
    for label in sorted(by_class, key=str):
        members = by_class[label]
        take = round(size * len(members) / len(rows))
        chosen.update(rng.sample(members, take))
    pool = [r for i, r in enumerate(rows) if i not in chosen]
    test = [r for i, r in enumerate(rows) if i in chosen]
    return pool, test


def load_pool(src: Path, cfg: DataConfig) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Return (train pool, test rows, provenance) with labels checked and kept raw."""
    if not src.is_dir():
        raise DataError(src, "not a directory; pass a dataset folder.")
    train_file = find_split_file(src, "train")
    meta: dict[str, Any] = {"source": str(src.resolve())}
    if train_file is not None:
        pool, is_pair = read_rows(train_file, cfg)
        test_file = find_split_file(src, "test") or find_split_file(src, "dev")
        if test_file is None:
            raise DataError(src, "has a train file but neither test nor dev to evaluate on.")
        test, _ = read_rows(test_file, cfg, is_pair=is_pair, pair_from=train_file)
        files = {"train": train_file, "test": test_file}
        meta["test_source"] = test_file.name
    else:
        all_file = find_split_file(src, "all")
        if all_file is None:
            raise DataError(src, f"holds no train.* or all.* file (formats: {', '.join(FORMATS)}).")
        rows, is_pair = read_rows(all_file, cfg)
        pool, test = _carve_test(rows)
        files = {"train": all_file, "test": all_file}
        meta["test_source"] = (f"carved from {all_file.name}: stratified {CARVE_SHARE:.0%} "
                               f"(max {CARVE_MAX}), random.Random({CARVE_SEED})")
    # Check labels on copies so that the files keep their original label values.
    checked = {"train": [dict(r) for r in pool], "test": [dict(r) for r in test]}
    names, num_labels = assign_label_ids(checked, files, cfg)
    meta.update(num_labels=num_labels, label_names=names, is_pair=is_pair)
    for row, ids in zip(pool, checked["train"]):
        row["label_id"] = ids["label"]
    return pool, test, meta


def sample(pool: list[dict], k: int, seed: int, num_labels: int) -> tuple[list[int], list[int]]:
    """Indices of K train and K dev examples per class, disjoint, deterministic per seed."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(pool):
        by_class[row["label_id"]].append(i)
    rng = random.Random(seed)
    train, dev = [], []
    for label in range(num_labels):
        members = list(by_class[label])
        rng.shuffle(members)
        train += members[:k]
        dev += members[k: 2 * k]
    return sorted(train), sorted(dev)


def _strip(row: dict, keep_label: bool) -> dict:
    out = {"text": row["text"]}
    if "text_pair" in row:
        out["text_pair"] = row["text_pair"]
    if keep_label:
        out["label"] = row["label"]
    out["source"] = row["source"]
    return out


def _holds_only_ours(folder: Path) -> bool:
    try:
        return all(entry.name in OUR_FILES and entry.is_file() for entry in folder.iterdir())
    except OSError:
        return False


def _is_ours(folder: Path) -> bool:
    """Whether `folder` is a few-shot folder plmtune wrote (so replacing it loses nothing)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(meta, dict):
        return False
    return meta.get("written_by") == WRITTEN_BY or _LEGACY_META_KEYS <= meta.keys()


def _check_target(final: Path, src: Path) -> None:
    """Refuse a seed folder that is or holds the source, or that plmtune did not write."""
    target, source = final.resolve(), src.resolve()
    if target == source:
        raise PlmtuneError(f"{final}: refusing to write a few-shot split here: it is the source folder "
                           f"{src}, which would be replaced by its own sample. Pick another output folder.")
    if target in source.parents:
        raise PlmtuneError(f"{final}: refusing to write a few-shot split here: it holds the source folder "
                           f"{src}, which would be deleted. Pick another output folder.")
    if not final.exists() and not final.is_symlink():
        return
    if not final.is_dir() or not _is_ours(final):
        raise PlmtuneError(f"{final}: exists and is not a few-shot folder written by plmtune (no plmtune "
                           "meta.json), so it is left alone; move it away or pick another output folder.")
    extra = sorted(entry.name for entry in final.iterdir() if entry.name not in OUR_FILES)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise PlmtuneError(f"{final}: a few-shot folder from an earlier run that also holds {shown}; a "
                           "re-run would delete them, so move them away (or pick another output folder).")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _clean_stale_temps(out: Path) -> None:
    """Remove temp folders that killed runs left in `out`: only our name patterns, only our files."""
    for entry in out.iterdir():
        match = _TEMP.fullmatch(entry.name)
        if match:
            stale = not _alive(int(match["pid"]))  # a live pid may be another run writing right now
        else:
            stale = _LEGACY_TEMP.fullmatch(entry.name) is not None
        if stale and entry.is_dir() and not entry.is_symlink() and _holds_only_ours(entry):
            shutil.rmtree(entry, ignore_errors=True)


def _make_temp(out: Path, name: str) -> Path:
    # Not tempfile.mkdtemp: it makes the folder 0700, which the rename would carry to the output.
    # os.mkdir applies the umask, as for any other folder the user makes.
    while True:
        tmp = out / f".{name}.plmtune-tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _swap_in(tmp: Path, final: Path) -> None:
    """Put `tmp` at `final`; an old `final` (checked to be ours) is moved aside first, then removed."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = _make_temp(final.parent, final.name)
    os.replace(final, old)  # an empty directory is replaced atomically
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def make_fewshot(src: str | Path, out: str | Path, k: int, seeds: list[int],
                 cfg: DataConfig | None = None) -> list[Path]:
    """Write one few-shot folder per seed under `out`; return their paths."""
    cfg = cfg or DataConfig()
    src, out = Path(src), Path(out)
    if k < 1:
        raise DataError(src, f"--k must be at least 1, got {k}.")
    if not seeds:
        raise DataError(src, "--seeds must list at least one seed.")
    pool, test, meta = load_pool(src, cfg)
    counts: dict[int, int] = defaultdict(int)
    for row in pool:
        counts[row["label_id"]] += 1
    short = {label: n for label, n in counts.items() if n < 2 * k}
    if short:
        raise DataError(src, f"K={k} needs {2 * k} train examples per class (K train + K dev); "
                             f"class(es) {sorted(short)} have only {sorted(short.values())}.")
    plans = []
    for seed in seeds:
        train_idx, dev_idx = sample(pool, k, seed, meta["num_labels"])
        taken = set(train_idx) | set(dev_idx)
        plans.append((seed, train_idx, dev_idx, [i for i in range(len(pool)) if i not in taken]))
    for seed, *_ in plans:
        _check_target(out / f"{k}-{seed}", src)
    out.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(out)
    written = []
    for seed, train_idx, dev_idx, rest in plans:
        final = out / f"{k}-{seed}"
        # Build in a sibling temp folder, then rename: a crash never leaves half a split.
        tmp = _make_temp(out, final.name)
        try:
            _write_jsonl(tmp / "train.jsonl", [_strip(pool[i], True) for i in train_idx])
            _write_jsonl(tmp / "dev.jsonl", [_strip(pool[i], True) for i in dev_idx])
            _write_jsonl(tmp / "test.jsonl", [_strip(r, True) for r in test])
            _write_jsonl(tmp / "unlabeled.jsonl", [_strip(pool[i], False) for i in rest])
            counts_out = {"train": len(train_idx), "dev": len(dev_idx), "test": len(test), "unlabeled": len(rest)}
            info = dict(meta, written_by=WRITTEN_BY, k=k, seed=seed, counts=counts_out,
                        pool_label_counts={str(label): n for label, n in sorted(counts.items())})
            (tmp / "meta.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
            _swap_in(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written.append(final)
    return written
