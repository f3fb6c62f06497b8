"""Task folders: read train/dev/test files (JSONL, CSV or TSV), check them, tokenise, batch.

A task folder holds ``train.*``, ``dev.*`` and ``test.*`` (any of .jsonl, .csv, .tsv) with the
fields ``text``, optional ``text_pair`` and ``label`` (an integer id or a class name). Field
names are mapped by the recipe's ``data`` section. Every problem in a file raises a
:class:`~plmtune.errors.DataError` that names the file, the line and the field.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import DataConfig
from .errors import DataError

SPLITS = ("train", "dev", "test")
FORMATS = (".jsonl", ".csv", ".tsv")


# --------------------------------------------------------------------------- reading


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(path, f"the file is not valid UTF-8 (byte 0x{data[err.start]:02x}); "
                              "re-save it as UTF-8.", line=line) from err


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSONL/CSV/TSV file into (line number, record) pairs; blank lines are skipped."""
    path = Path(path)
    text = _decode(path)
    suffix = path.suffix.lower()
    records: list[tuple[int, dict[str, Any]]] = []
    if suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, f"malformed JSON ({err.msg} at column {err.colno}).", line=number) from err
            if not isinstance(record, dict):
                raise DataError(path, f"each line must be a JSON object, got {type(record).__name__}.", line=number)
            records.append((number, record))
    elif suffix in (".csv", ".tsv"):
        # TSV as GLUE writes it: no quoting, so a quote character is just a character.
        kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
        reader = csv.reader(io.StringIO(text, newline=""), **kwargs)
        try:
            header = next(reader)
        except StopIteration:
            return []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(path, f"expected {len(header)} columns ({', '.join(header)}), got {len(row)}.",
                                line=reader.line_num)
            records.append((reader.line_num, dict(zip(header, row))))
    else:
        raise DataError(path, f"unknown file type '{suffix}'; use one of {', '.join(FORMATS)}.")
    return records


def find_split_file(task_dir: Path, split: str) -> Path | None:
    found = [task_dir / f"{split}{ext}" for ext in FORMATS if (task_dir / f"{split}{ext}").is_file()]
    if len(found) > 1:
        raise DataError(task_dir, f"more than one file for split '{split}': "
                                  f"{', '.join(p.name for p in found)}; keep one.")
    return found[0] if found else None


# --------------------------------------------------------------------------- checking


@dataclass
class TaskData:
    """Checked rows of a task: each row is {text, text_pair?, label, source} (label = class id)."""

    name: str
    path: Path
    splits: dict[str, list[dict[str, Any]]]
    label_names: list[str] | None
    num_labels: int
    is_pair: bool
    files: dict[str, Path] = field(default_factory=dict)


def _raw_label(value: Any, path: Path, line: int, name: str) -> int | str:
    if isinstance(value, bool) or value is None or not isinstance(value, (int, str)):
        raise DataError(path, f"a label must be an integer id or a class name, got {value!r}.", line, name)
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.lstrip("-").isdigit():
            return int(stripped)
        if not stripped:
            raise DataError(path, "the label is empty.", line, name)
        return stripped
    return value


def _text(record: dict, key: str, path: Path, line: int, required: bool = True) -> str | None:
    if key not in record or record[key] is None:
        if not required:
            return None
        present = ", ".join(sorted(record)) or "none"
        raise DataError(path, f"missing field (fields present: {present}); map field names in the "
                              "recipe's data section if yours differ.", line, key)
    value = record[key]
    if not isinstance(value, str):
        raise DataError(path, f"must be a string, got {value!r}.", line, key)
    return value


def read_rows(path: Path, cfg: DataConfig, labelled: bool = True, is_pair: bool | None = None
              ) -> tuple[list[dict[str, Any]], bool]:
    """Read and check one split file; labels stay raw (int or name) until `assign_label_ids`."""
    records = read_records(path)
    if not records:
        raise DataError(path, "the split is empty.")
    if is_pair is None:
        is_pair = cfg.text_pair_field in records[0][1]
    rows = []
    for line, record in records:
        row: dict[str, Any] = {"text": _text(record, cfg.text_field, path, line), "source": f"{path.name}:{line}"}
        if is_pair:
            row["text_pair"] = _text(record, cfg.text_pair_field, path, line)
        extra = {k: v for k, v in record.items() if k not in (cfg.text_field, cfg.text_pair_field, cfg.label_field)}
        if extra:
            row["fields"] = extra  # other columns (ids, feature vectors) for techniques to use
        if labelled:
            if cfg.label_field not in record:
                _text(record, cfg.label_field, path, line)  # raises the missing-field error
            row["label"] = _raw_label(record[cfg.label_field], path, line, cfg.label_field)
        rows.append(row)
    return rows, is_pair


def assign_label_ids(splits: dict[str, list[dict]], files: dict[str, Path], cfg: DataConfig
                     ) -> tuple[list[str] | None, int]:
    """Map raw labels to ids 0..n-1 in place, checking every class is in train.

    Returns the class names (None where labels are bare ids) and the number of classes.
    """
    train_path = files["train"]
    raw = [row["label"] for row in splits["train"]]
    kinds = {type(v) for v in raw}
    names: list[str] | None = list(cfg.label_names) if cfg.label_names else None
    if names is None and kinds == {str}:
        names = sorted(set(raw))
    if names is None and kinds != {int}:
        first_str = next(i for i, v in enumerate(raw) if isinstance(v, str))
        line = splits["train"][first_str]["source"].rsplit(":", 1)[1]
        raise DataError(train_path, "labels mix integer ids and class names; use one kind or set "
                                    "data.label_names.", int(line), cfg.label_field)
    num_labels = len(names) if names is not None else max(raw) + 1
    for split, rows in splits.items():
        path = files[split]
        for row in rows:
            value, line = row["label"], int(row["source"].rsplit(":", 1)[1])
            if isinstance(value, str):
                if names is None or value not in names:
                    known = ", ".join(names) if names else "integer ids"
                    raise DataError(path, f"unknown label name '{value}' (classes: {known}).", line, cfg.label_field)
                row["label"] = names.index(value)
            elif not 0 <= value < num_labels:
                raise DataError(path, f"label id {value} is outside 0..{num_labels - 1}.", line, cfg.label_field)
    present = {row["label"] for row in splits["train"]}
    missing = [i for i in range(num_labels) if i not in present]
    if missing:
        shown = ", ".join(names[i] if names else str(i) for i in missing)
        raise DataError(train_path, f"class(es) {shown} never occur in train, so no model can learn "
                                    "them; add examples or drop the class.", field=cfg.label_field)
    if num_labels < 2:
        raise DataError(train_path, "train has a single class; classification needs at least two.",
                        field=cfg.label_field)
    return names, num_labels


def load_task(task_dir: str | Path, cfg: DataConfig, need: tuple[str, ...] = ("train",)) -> TaskData:
    """Load and check a task folder's splits (train/dev/test); the splits in `need` must exist."""
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise DataError(task_dir, "not a directory; pass a task folder holding train/dev/test files.")
    files = {s: p for s in SPLITS if (p := find_split_file(task_dir, s)) is not None}
    for split in need:
        if split not in files:
            hint = " (a single-file dataset: make splits with 'plmtune data fewshot')" \
                if any(task_dir.glob("all.*")) else ""
            raise DataError(task_dir, f"no {split} file ({split}.jsonl, .csv or .tsv){hint}.")
    splits, is_pair = {}, None
    for split, path in files.items():
        splits[split], pair = read_rows(path, cfg, is_pair=is_pair)
        is_pair = pair if is_pair is None else is_pair
    names, num_labels = assign_label_ids(splits, files, cfg)
    return TaskData(task_name(task_dir), task_dir, splits, names, num_labels, bool(is_pair), files)


def task_name(task_dir: Path) -> str:
    """'sst2/16-13' for a few-shot folder made by `plmtune data fewshot`, else the folder name."""
    meta = task_dir / "meta.json"
    if meta.is_file():
        try:
            source = json.loads(meta.read_text(encoding="utf-8")).get("source")
        except (json.JSONDecodeError, OSError, AttributeError):
            source = None
        if source:
            return f"{Path(source).name}/{task_dir.name}"
    return task_dir.name


# --------------------------------------------------------------------------- tensors


class EncodedSplit(torch.utils.data.Dataset):
    """Tokenised rows; each item carries its row index so predictions can be put back in order.

    Rows with a ``features`` list (knowledge injection) carry it into the batch as floats.
    """

    def __init__(self, rows: list[dict], tokenizer: Any, max_length: int, truncation: str = "head",
                 head_tokens: int = 0):
        texts = [r["text"] for r in rows]
        pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
        if truncation == "head" or pairs is not None:
            enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        else:
            enc = _truncate_single(texts, tokenizer, max_length, truncation, head_tokens)
        self.items = []
        for i, row in enumerate(rows):
            item = {key: enc[key][i] for key in ("input_ids", "attention_mask", "token_type_ids") if key in enc}
            item["index"] = i
            if "label" in row:
                item["labels"] = row["label"]
            for key in ("features", "soft_labels"):  # knowledge injection; teacher probabilities
                if key in row:
                    item[key] = row[key]
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def lengths(self) -> list[int]:
        return [len(item["input_ids"]) for item in self.items]


def _truncate_single(texts: list[str], tokenizer: Any, max_length: int, how: str, head_tokens: int
                     ) -> dict[str, list[list[int]]]:
    """Keep the tail, or the head and the tail, of each text's tokens (then add [CLS]/[SEP])."""
    prefix, suffix = _special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    head = head_tokens or budget // 4
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        if len(ids) > budget:
            ids = ids[-budget:] if how == "tail" else ids[:head] + ids[len(ids) - (budget - head):]
        full = prefix + ids + suffix
        out["input_ids"].append(full)
        out["attention_mask"].append([1] * len(full))
        out["token_type_ids"].append([0] * len(full))
    return out


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single text ([CLS] and [SEP] for BERT)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    raise ValueError("could not locate the text between the tokenizer's special tokens")


class PadCollator:
    """Pads a list of items to the longest in the batch (dynamic padding)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        batch: dict[str, torch.Tensor] = {}
        for key, pad in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in items[0]:
                batch[key] = torch.tensor([item[key] + [pad] * (width - len(item[key])) for item in items])
        for key in ("labels", "index"):
            if key in items[0]:
                batch[key] = torch.tensor([item[key] for item in items])
        for key in ("features", "soft_labels"):
            if key in items[0]:
                batch[key] = torch.tensor([item[key] for item in items], dtype=torch.float32)
        return batch


def train_loader(split: EncodedSplit, batch_size: int, seed: int, collate: PadCollator) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(split, batch_size=batch_size, shuffle=True, generator=generator,
                                       collate_fn=collate)


def eval_loader(split: EncodedSplit, batch_size: int, collate: PadCollator) -> torch.utils.data.DataLoader:
    # Sorting by length keeps padding (and so wasted compute) small; `index` restores row order.
    order = sorted(range(len(split)), key=lambda i: len(split.items[i]["input_ids"]))
    return torch.utils.data.DataLoader(split, batch_size=batch_size, sampler=order, collate_fn=collate)
