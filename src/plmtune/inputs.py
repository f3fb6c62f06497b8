"""In-memory data for the Python API: a ``datasets.Dataset``, a pandas DataFrame, a list of dicts or a dict of lists.

Everything becomes JSONL files in a task folder and then goes through the one reader
(:func:`plmtune.data.load_task`), so in-memory data is checked exactly like files, with the same
messages; those name the split and the row (``train.jsonl, line 5`` is row 5 of `train`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import PlmtuneError

KINDS = ("a task folder, a .jsonl/.csv/.tsv file, a datasets.Dataset, a pandas DataFrame, a list of dicts "
         "or a dict of equal-length lists")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays to Python values; NaN (a missing value in pandas) to None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy scalar or array, torch tensor
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def to_records(data: Any, what: str) -> list[dict[str, Any]]:
    """The rows of in-memory `data` as plain dicts; `what` names it in errors ('train', 'the input')."""
    if type(data).__name__ == "DataFrame" and hasattr(data, "to_dict"):  # pandas (or polars' alike)
        records = data.to_dict("records") if "pandas" in type(data).__module__ else data.to_dicts()
    elif hasattr(data, "to_list") and hasattr(data, "column_names"):  # datasets.Dataset
        records = data.to_list()
    elif isinstance(data, Mapping):
        lengths = {k: len(v) for k, v in data.items() if isinstance(v, (list, tuple))}
        if len(lengths) != len(data) or len(set(lengths.values())) > 1:
            raise PlmtuneError(f"{what}: a dict of data must map each field to a list, all of one length "
                               f"(got {', '.join(f'{k}: {n}' for k, n in lengths.items()) or 'no lists'}).")
        n = next(iter(lengths.values()), 0)
        records = [{k: data[k][i] for k in data} for i in range(n)]
    elif isinstance(data, (list, tuple)):
        records = list(data)
    else:
        raise PlmtuneError(f"{what}: cannot read a {type(data).__name__}; give {KINDS}.")
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise PlmtuneError(f"{what}: row {i + 1} is a {type(record).__name__}, not a mapping of field names to "
                               "values (e.g. {'text': ..., 'label': ...}).")
    # pandas stores an integer column with a missing value as floats (1.0, NaN): whole floats at the
    # top level of a row go back to ints, so labels stay labels (and NaN becomes the null it was).
    return [{str(k): _whole(_plain(v)) for k, v in record.items()} for record in records]


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def write_jsonl(records: list[dict[str, Any]], path: Path) -> Path:
    # default=str: a date or another odd column becomes its text (the reader then checks the fields it uses)
    path.write_text("".join(json.dumps(r, ensure_ascii=False, allow_nan=False, default=str) + "\n" for r in records),
                    encoding="utf-8")
    return path


def is_path(data: Any) -> bool:
    return isinstance(data, (str, Path))


def task_folder(folder: Path, train: Any, dev: Any = None, test: Any = None, unlabeled: Any = None) -> Path:
    """Write in-memory splits into `folder` as train/dev/test/unlabeled.jsonl (files are copied as they are)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (("train", train), ("dev", dev), ("test", test), ("unlabeled", unlabeled)):
        if data is None:
            continue
        if is_path(data):
            source = Path(data)
            if not source.is_file():
                raise PlmtuneError(f"{name}: {source} is not a file; give {KINDS} (a task folder goes in train=).")
            if source.suffix not in (".jsonl", ".csv", ".tsv"):
                raise PlmtuneError(f"{name}: {source} must be a .jsonl, .csv or .tsv file.")
            shutil.copyfile(source, folder / f"{name}{source.suffix}")
        else:
            write_jsonl(to_records(data, name), folder / f"{name}.jsonl")
    return folder


def class_label_names(splits: dict[str, Any], field: str) -> list[str] | None:
    """The class names of `field` where it is a ``datasets.ClassLabel`` column of the in-memory splits.

    A ``Dataset`` stores such labels as ids (``to_list`` gives 0, 1...); its names, in id order, become
    ``data.label_names``. Splits that name their classes differently are refused (their ids would mix).
    """
    found: dict[str, list[str]] = {}
    for split, data in splits.items():
        feature = (getattr(data, "features", None) or {}).get(field) if hasattr(data, "column_names") else None
        if type(feature).__name__ == "ClassLabel" and getattr(feature, "names", None):
            found[split] = [str(name) for name in feature.names]
    if len({tuple(names) for names in found.values()}) > 1:
        shown = "; ".join(f"{split}: {', '.join(names)}" for split, names in found.items())
        raise PlmtuneError(f"the ClassLabel column '{field}' has different class names per split ({shown}); "
                           "give every split the same ClassLabel, or set data.label_names.")
    return next(iter(found.values()), None)


def dataset_dict_splits(data: Any) -> dict[str, Any] | None:
    """The splits of a ``datasets.DatasetDict`` (or any mapping of split name -> rows), HF's 'validation' as dev."""
    if not isinstance(data, Mapping) or not data or not all(hasattr(v, "column_names") or isinstance(v, list)
                                                            for v in data.values()):
        return None
    if "train" not in data:
        return None
    names = {"validation": "dev", "dev": "dev", "train": "train", "test": "test", "unlabeled": "unlabeled"}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise PlmtuneError(f"the data has split(s) {', '.join(unknown)}; plmtune reads train, dev (or validation), "
                           "test and unlabeled.")
    return {names[k]: v for k, v in data.items()}
