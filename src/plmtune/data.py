"""Task folders: read train/dev/test files (JSONL, CSV or TSV), check them, tokenise, batch.

A task folder holds ``train.*``, ``dev.*`` (or ``validation.*``, the Hugging Face name) and
``test.*`` (any of .jsonl, .csv, .tsv) with the fields ``text``, optional ``text_pair`` and
``label``. Field names are mapped by the recipe's ``data`` section. Every problem in a file raises
a :class:`~plmtune.errors.DataError` that names the file, the line and the field.

Rules that hold in every format:

* Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` only; U+2028, U+2029 and U+0085 are ordinary
  characters (JSON allows them raw inside strings, and ``plmtune data fewshot`` writes them so).
* A label is an integer id (ASCII digits; a string such as ``"2"`` counts) or a class name. A label
  that looks like another number (``0.0``, ``1e3``, ``nan``) is refused, as JSON numbers such as
  ``1.0`` are, unless ``data.label_names`` lists it as a class name. Every id must occur in train,
  so an id is bounded by the number of train rows.
* A task is a pair task when any row of the first split read (train) has a non-null ``text_pair``;
  then every row of every split needs one, and a pair in a later split of a single-text task is an
  error: a pair text is never dropped silently.
* CSV follows RFC 4180: a quoted field may span lines (the row is reported at the line where it
  starts), but a quote that never closes, or one that runs over more than ``MAX_ROW_LINES`` lines,
  is reported at the line where it opened. TSV is read as GLUE writes it: no quoting.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import DataConfig
from .errors import DataError

SPLITS = ("train", "dev", "test")
FORMATS = (".jsonl", ".csv", ".tsv")
# Other names a split's file may have (Hugging Face datasets call the dev split 'validation').
SPLIT_ALIASES = {"dev": ("validation",)}
# A legal multi-line CSV field longer than this is far likelier a stray quote swallowing rows.
MAX_ROW_LINES = 100
# csv's default field limit (128 KiB) would refuse a long document; JSONL reads any line length.
CSV_FIELD_LIMIT = 2 ** 31 - 1

_LINE_END = re.compile(r"\r\n|\r|\n")
_INT_ID = re.compile(r"-?[0-9]+")
# Marks the end of a CSV text: it ends up inside a field only when a quote is still open at the end.
_EOF_MARK = "\ue000plmtune:end-of-file\ue000"


# --------------------------------------------------------------------------- reading


def _shown(value: Any, limit: int = 60) -> str:
    """A value from a file, made safe for a one-line message: no raw newlines, bounded length."""
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= limit else text[:limit] + "…"


def _listed(items: list, limit: int = 10) -> str:
    shown = ", ".join(_shown(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = len(_LINE_END.findall(data[: err.start].decode("utf-8", "replace"))) + 1
        raise DataError(path, f"the file is not valid UTF-8 (byte 0x{data[err.start]:02x}); "
                              "re-save it as UTF-8.", line=line) from err


def _read_jsonl(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    records = []
    # Not str.splitlines(): that also splits at U+2028/U+2029/U+0085, which are legal inside strings.
    # A raw \r or \n can never be inside a JSON string, so splitting at them is always safe.
    for number, line in enumerate(_LINE_END.split(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, f"malformed JSON ({err.msg} at column {err.colno}).", line=number) from err
        except RecursionError:
            raise DataError(path, "the JSON is nested too deeply to read; each line must be a flat "
                                  "JSON object of fields.", line=number) from None
        except ValueError as err:  # e.g. an integer of more than 4300 digits
            raise DataError(path, f"unreadable JSON ({_shown(err, 120)}).", line=number) from None
        if not isinstance(record, dict):
            raise DataError(path, f"each line must be a JSON object, got {type(record).__name__}.", line=number)
        records.append((number, record))
    return records


def _read_table(path: Path, text: str, tsv: bool) -> list[tuple[int, dict[str, Any]]]:
    # TSV as GLUE writes it: no quoting, so a quote character is just a character.
    kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)  # only ever raised: other readers keep working
    reader = csv.reader(io.StringIO(text + "\n" + _EOF_MARK, newline=""), **kwargs)
    records: list[tuple[int, dict[str, Any]]] = []
    header: list[str] | None = None
    end = 0  # the last physical line of the previous row
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise DataError(path, f"malformed {'TSV' if tsv else 'CSV'} ({_shown(err, 120)}).",
                            line=end + 1) from None
        start, end = end + 1, reader.line_num
        if row == [_EOF_MARK]:
            break
        if row and _EOF_MARK in row[-1]:
            raise DataError(path, "a quoted field opens here (a '\"') and its quote never closes before "
                                  "the end of the file; close the quote, or double a quote "
                                  "that is part of the text (\"\").", line=start)
        if not any(cell.strip() for cell in row):
            continue
        if end - start + 1 > MAX_ROW_LINES:
            raise DataError(path, f"a quoted field runs over {end - start + 1} lines ({start}-{end}); "
                                  "that is almost always an unbalanced quote ('\"') swallowing the rows "
                                  "in between. Close it, or double a quote that is part of the text.",
                            line=start)
        if header is None:
            header = row
            seen: set[str] = set()
            for name in header:
                if name in seen:
                    raise DataError(path, "the header names this column twice; rename one of them.",
                                    line=start, field=_shown(name))
                seen.add(name)
            continue
        if len(row) != len(header):
            hint = (f"; a quoted field (a '\"') holds a line break, so this row spans lines {start}-{end}: "
                    "check for an unbalanced quote" if end > start else "")
            raise DataError(path, f"expected {len(header)} columns ({_listed(header)}), got {len(row)}{hint}.",
                            line=start)
        records.append((start, dict(zip(header, row))))
    return records


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSONL/CSV/TSV file into (line number, record) pairs; blank lines are skipped.

    The line number is where the record starts (a quoted CSV field may continue on later lines).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(path, f"unknown file type '{suffix}'; use one of {', '.join(FORMATS)}.")
    text = _decode(path)
    if suffix == ".jsonl":
        return _read_jsonl(path, text)
    return _read_table(path, text, tsv=suffix == ".tsv")


def find_split_file(task_dir: Path, split: str) -> Path | None:
    """The file of `split` in `task_dir` (any format; ``validation.*`` counts as dev), or None."""
    names = (split, *SPLIT_ALIASES.get(split, ()))
    found = [task_dir / f"{name}{ext}" for name in names for ext in FORMATS if (task_dir / f"{name}{ext}").is_file()]
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


def _raw_label(value: Any, path: Path, line: int, name: str, label_names: tuple[str, ...] | list[str] = ()
               ) -> int | str:
    """An integer id or a class name; anything else (a float, a bool, a decimal string) is refused."""
    if value is None:
        raise DataError(path, "the label is null; give an integer id or a class name.", line, name)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(path, f"a label must be an integer id or a class name, got {_shown(value)}.", line, name)
    if isinstance(value, int):
        return value
    stripped = value.strip()
    if not stripped:
        raise DataError(path, "the label is empty.", line, name)
    if stripped in label_names:
        return stripped
    if _INT_ID.fullmatch(stripped):
        return int(stripped)
    try:
        number = float(stripped)
    except ValueError:
        return stripped
    # '0.0' is neither an id nor (surely) a class name; JSON's 0.0 is refused too, so refuse it here.
    hint = f" (write {int(number)})" if number.is_integer() else ""
    raise DataError(path, f"label '{_shown(stripped)}' looks like a decimal number; labels must be integer "
                          f"ids 0, 1, 2…{hint} or class names, or list it in data.label_names to use it "
                          "as a class name.", line, name)


def _text(record: dict, key: str, path: Path, line: int, required: bool = True, hint: str = "") -> str | None:
    if record.get(key) is None:
        if not required:
            return None
        if key in record:
            raise DataError(path, f"the value is null; give a string (an empty one is allowed){hint}.", line, key)
        present = _listed(sorted(record)) or "none"
        raise DataError(path, f"missing field (fields present: {present}); map field names in the "
                              f"recipe's data section if yours differ{hint}.", line, key)
    value = record[key]
    if not isinstance(value, str):
        raise DataError(path, f"must be a string, got {_shown(value)}.", line, key)
    return value


def read_rows(path: Path, cfg: DataConfig, labelled: bool = True, is_pair: bool | None = None,
              pair_from: Path | None = None, keep_label: bool = False) -> tuple[list[dict[str, Any]], bool]:
    """Read and check one split file; labels stay raw (int or name) until `assign_label_ids`.

    `keep_label` (unlabelled reads only): a row's label field, where it has one, stays unchecked
    among its other columns (``fields``), as ``plmtune predict`` carries it to its output.

    `is_pair` None decides pair-ness from this file (any row with a non-null pair field); otherwise
    it was decided by the file `pair_from` and every row here must agree with it.
    """
    records = read_records(path)
    if not records:
        raise DataError(path, "the split is empty.")
    pair_key = cfg.text_pair_field
    decided = pair_from.name if pair_from is not None else "the train split"
    hint = ""
    if is_pair is None:
        with_pair = next((line for line, record in records if record.get(pair_key) is not None), None)
        is_pair = with_pair is not None
        if is_pair:
            hint = f"; line {with_pair} has a '{pair_key}', so every row needs one (or none may have one)"
    elif is_pair:
        hint = f"; {decided} has a '{pair_key}', so every row of every split needs one"
    rows = []
    for line, record in records:
        row: dict[str, Any] = {"text": _text(record, cfg.text_field, path, line), "source": f"{path.name}:{line}"}
        if is_pair:
            row["text_pair"] = _text(record, pair_key, path, line, hint=hint)
        elif record.get(pair_key) is not None:
            raise DataError(path, f"this row has a '{pair_key}' but {decided} has none, so "
                                  "the task is read as single-text and the pair would be lost; give every "
                                  f"split a '{pair_key}' or none.", line, pair_key)
        dropped = (cfg.text_field, pair_key) if keep_label and not labelled else (cfg.text_field, pair_key,
                                                                                   cfg.label_field)
        extra = {k: v for k, v in record.items() if k not in dropped}
        if extra:
            row["fields"] = extra  # other columns (ids, feature vectors) for techniques to use
        if labelled:
            if cfg.label_field not in record:
                _text(record, cfg.label_field, path, line)  # raises the missing-field error
            row["label"] = _raw_label(record[cfg.label_field], path, line, cfg.label_field, cfg.label_names or ())
        rows.append(row)
    return rows, is_pair


def _line(row: dict) -> int:
    return int(row["source"].rsplit(":", 1)[1])


def _missing_ids(present: set[int], num_labels: int, names: list[str] | None, limit: int = 10) -> str:
    """The first `limit` classes of 0..num_labels-1 absent from `present`, and how many more (no list of all)."""
    shown = []
    for i in range(num_labels):  # stops after len(present) + limit steps at most
        if i not in present:
            shown.append(names[i] if names else str(i))
            if len(shown) == limit:
                break
    more = num_labels - sum(1 for i in present if 0 <= i < num_labels) - len(shown)
    return ", ".join(_shown(name) for name in shown) + (f" and {more} more" if more > 0 else "")


def assign_label_ids(splits: dict[str, list[dict]], files: dict[str, Path], cfg: DataConfig
                     ) -> tuple[list[str] | None, int]:
    """Map raw labels to ids 0..n-1 in place, checking every class is in train.

    Returns the class names (None where labels are bare ids) and the number of classes. Nothing here
    is sized by a label id before the id is checked against the number of train rows.
    """
    train_path, train = files["train"], splits["train"]
    raw = [row["label"] for row in train]
    kinds = {type(v) for v in raw}
    names: list[str] | None = list(cfg.label_names) if cfg.label_names else None
    if names is None and kinds == {str}:
        names = sorted(set(raw))
    if names is None and kinds != {int}:
        first_str = next(row for row in train if isinstance(row["label"], str))
        raise DataError(train_path, "labels mix integer ids and class names; use one kind or set "
                                    "data.label_names.", _line(first_str), cfg.label_field)
    if names is None:
        top = max(train, key=lambda row: row["label"])
        num_labels = top["label"] + 1
        # Every id 0..max must occur in train, so an id can never reach the number of train rows;
        # say so at the id's line before anything is sized by it (an id of 10**12 is one line of text).
        if num_labels > len(train):
            missing = _missing_ids({v for v in raw if v >= 0}, num_labels, names)
            raise DataError(train_path, f"label id {top['label']} is too large: train has {len(train)} rows, "
                                        f"so class(es) {missing} never occur in train. Use ids 0..n-1 for n "
                                        "classes, or class names.", _line(top), cfg.label_field)
    else:
        num_labels = len(names)
    index = {name: i for i, name in enumerate(names or ())}
    for split, rows in splits.items():
        path = files[split]
        for row in rows:
            value = row["label"]
            if isinstance(value, str):
                if value not in index:
                    known = _listed(names) if names else "integer ids"
                    raise DataError(path, f"unknown label name '{_shown(value)}' (classes: {known}).", _line(row),
                                    cfg.label_field)
                row["label"] = index[value]
            elif not 0 <= value < num_labels:
                raise DataError(path, f"label id {_shown(value)} is outside 0..{num_labels - 1}.", _line(row),
                                cfg.label_field)
    present = {row["label"] for row in train}
    if len(present) < num_labels:
        raise DataError(train_path, f"class(es) {_missing_ids(present, num_labels, names)} never occur in "
                                    "train, so no model can learn them; add examples or drop the class.",
                        field=cfg.label_field)
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
    # The first split read (train) decides whether this is a pair task; the others must agree.
    splits, is_pair, pair_from = {}, None, None
    for split, path in files.items():
        splits[split], is_pair = read_rows(path, cfg, is_pair=is_pair, pair_from=pair_from)
        pair_from = pair_from or path
    names, num_labels = assign_label_ids(splits, files, cfg)
    return TaskData(task_name(task_dir), task_dir, splits, names, num_labels, bool(is_pair), files)


def task_name(task_dir: Path) -> str:
    """'sst2/16-13' for a few-shot folder made by `plmtune data fewshot`, else the folder name."""
    meta = task_dir / "meta.json"
    if meta.is_file():
        try:
            source = json.loads(meta.read_text(encoding="utf-8")).get("source")
        except (ValueError, OSError, AttributeError, RecursionError):
            source = None
        if source and isinstance(source, str):
            return f"{Path(source).name}/{task_dir.name}"
    return task_dir.name


# --------------------------------------------------------------------------- tensors


class EncodedSplit(torch.utils.data.Dataset):
    """Tokenised rows; each item carries its row index so predictions can be put back in order.

    `fields` names the extra per-row fields to carry into the batch (field -> torch dtype name),
    as techniques and stages declare them (``Technique.batch_fields``); no other row field is kept.
    """

    def __init__(self, rows: list[dict], tokenizer: Any, max_length: int, truncation: str = "head",
                 head_tokens: int = 0, fields: dict[str, str] | None = None):
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
            for key in fields or ():
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
    if "token_type_ids" not in getattr(tokenizer, "model_input_names", ["token_type_ids"]):
        del out["token_type_ids"]  # as the tokenizer itself does: MPNet and RoBERTa take no token types
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
    """Pads a list of items to the longest in the batch (dynamic padding); stacks the declared `fields`."""

    def __init__(self, pad_token_id: int, fields: dict[str, str] | None = None):
        self.pad_token_id = pad_token_id
        self.fields = {key: getattr(torch, dtype) for key, dtype in (fields or {}).items()}

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        batch: dict[str, torch.Tensor] = {}
        for key, pad in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in items[0]:
                batch[key] = torch.tensor([item[key] + [pad] * (width - len(item[key])) for item in items])
        for key in ("labels", "index"):
            if key in items[0]:
                batch[key] = torch.tensor([item[key] for item in items])
        for key, dtype in self.fields.items():
            if key in items[0]:
                batch[key] = torch.tensor([item[key] for item in items], dtype=dtype)
        return batch


def train_loader(split: EncodedSplit, batch_size: int, seed: int, collate: PadCollator) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(split, batch_size=batch_size, shuffle=True, generator=generator,
                                       collate_fn=collate)


def eval_loader(split: EncodedSplit, batch_size: int, collate: PadCollator) -> torch.utils.data.DataLoader:
    # Sorting by length keeps padding (and so wasted compute) small; `index` restores row order.
    order = sorted(range(len(split)), key=lambda i: len(split.items[i]["input_ids"]))
    return torch.utils.data.DataLoader(split, batch_size=batch_size, sampler=order, collate_fn=collate)
