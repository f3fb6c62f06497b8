from __future__ import annotations

import json

import pytest

from shared_data import SHARED_DATA, shared_dataset
from plmtune.config import DataConfig
from plmtune.data import EncodedSplit, PadCollator, eval_loader, load_task, read_records
from plmtune.errors import DataError

CFG = DataConfig()


@pytest.mark.parametrize("name", ["sst2", "trec", "rte", "mrpc", "cola", "chnsenticorp"])
def test_shared_datasets_load_as_they_are(name):
    task = load_task(shared_dataset(name), CFG)
    assert task.num_labels == {"trec": 6}.get(name, 2)
    assert task.is_pair == (name in ("rte", "mrpc"))
    assert all(0 <= row["label"] < task.num_labels for rows in task.splits.values() for row in rows)


def test_single_file_dataset_points_to_fewshot():
    with pytest.raises(DataError, match="plmtune data fewshot"):
        load_task(shared_dataset("subj"), CFG)


def test_csv_and_tsv_with_label_names(tmp_path):
    (tmp_path / "train.csv").write_text('text,label\n"a, quoted one",pos\nplain,neg\n')
    (tmp_path / "dev.tsv").write_text('text\tlabel\n"quotes" kept\tpos\nx\tneg\n')
    task = load_task(tmp_path, CFG)
    assert task.label_names == ["neg", "pos"]
    assert task.splits["train"][0] == {"text": "a, quoted one", "label": 1, "source": "train.csv:2"}
    assert task.splits["dev"][0]["text"] == '"quotes" kept'


def test_label_names_from_recipe_fix_the_order(tmp_path, write_jsonl):
    write_jsonl("train.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    task = load_task(tmp_path, DataConfig(label_names=["pos", "neg"]))
    assert [r["label"] for r in task.splits["train"]] == [0, 1]


def test_field_names_can_be_mapped(tmp_path, write_jsonl):
    write_jsonl("train.jsonl", [{"sentence": "a", "y": 0}, {"sentence": "b", "y": 1}])
    task = load_task(tmp_path, DataConfig(text_field="sentence", label_field="y"))
    assert task.splits["train"][1]["text"] == "b"


GOOD = {"text": "fine", "label": 0}
GOOD1 = {"text": "fine", "label": 1}


@pytest.mark.parametrize(
    ("train_rows", "dev_rows", "pattern"),
    [
        ([GOOD, "{not json", GOOD1], None, r"train.jsonl, line 2: malformed JSON"),
        ([GOOD, {"label": 1}], None, r"train.jsonl, line 2, field 'text': missing field"),
        ([GOOD, {"text": 3, "label": 1}], None, r"line 2, field 'text': must be a string"),
        ([GOOD, GOOD1], [{"text": "x", "label": 7}], r"dev.jsonl, line 1, field 'label': label id 7"),
        ([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}], [{"text": "c", "label": "neutral"}],
         r"dev.jsonl, line 1, field 'label': unknown label name 'neutral'"),
        ([{"text": "a", "label": 0}, {"text": "b", "label": 2}], None, r"class\(es\) 1 never occur in train"),
        ([GOOD, GOOD], None, "single class"),
        ([GOOD, {"text": "a", "label": True}], None, r"line 2, field 'label': a label must be"),
        ([GOOD, {"text": "a", "label": "pos"}], None, r"line 2, field 'label': labels mix"),
        ([[1, 2]], None, r"line 1: each line must be a JSON object"),
        ([{"text": "a", "text_pair": "b", "label": 0}, {"text": "c", "label": 1}], None,
         r"line 2, field 'text_pair': missing field"),
    ],
)
def test_bad_data_names_file_line_and_field(tmp_path, write_jsonl, train_rows, dev_rows, pattern):
    write_jsonl("train.jsonl", train_rows)
    if dev_rows is not None:
        write_jsonl("dev.jsonl", dev_rows)
    with pytest.raises(DataError, match=pattern):
        load_task(tmp_path, CFG)


def test_empty_split_and_non_utf8(tmp_path, write_jsonl):
    write_jsonl("train.jsonl", [GOOD, GOOD1])
    (tmp_path / "dev.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"dev.jsonl: the split is empty"):
        load_task(tmp_path, CFG)
    (tmp_path / "dev.jsonl").write_bytes(b'{"text": "ok", "label": 0}\n{"text": "caf\xe9", "label": 1}\n')
    with pytest.raises(DataError, match=r"dev.jsonl, line 2: the file is not valid UTF-8 \(byte 0xe9\)"):
        load_task(tmp_path, CFG)


def test_two_files_for_one_split_is_ambiguous(tmp_path, write_jsonl):
    write_jsonl("train.jsonl", [GOOD, GOOD1])
    (tmp_path / "train.csv").write_text("text,label\na,0\n")
    with pytest.raises(DataError, match="more than one file for split 'train'"):
        load_task(tmp_path, CFG)


def test_utf8_bom_is_accepted(tmp_path):
    (tmp_path / "x.tsv").write_bytes("\ufefftext\tlabel\nhello\t1\n".encode())
    assert read_records(tmp_path / "x.tsv") == [(2, {"text": "hello", "label": "1"})]


def test_padding_and_length_sorted_eval_keep_row_order(tokenizer):
    rows = [{"text": "a much longer sentence than the others here", "label": 0}, {"text": "short", "label": 1},
            {"text": "medium length one", "label": 0}]
    split = EncodedSplit(rows, tokenizer, max_length=16)
    batches = list(eval_loader(split, 2, PadCollator(tokenizer.pad_token_id)))
    assert batches[0]["index"].tolist() == [1, 2]  # shortest first
    first = batches[0]
    assert first["input_ids"].shape == first["attention_mask"].shape
    assert first["attention_mask"][0].sum() < first["attention_mask"][1].sum()
    assert (first["input_ids"][0][first["attention_mask"][0] == 0] == tokenizer.pad_token_id).all()


def test_truncation_respects_max_length(tokenizer):
    split = EncodedSplit([{"text": "word " * 100, "label": 0}], tokenizer, max_length=12)
    assert split.lengths() == [12]


def test_shared_data_readme_present_or_skip():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent on this machine")
    assert (SHARED_DATA / "README.md").is_file()


@pytest.mark.parametrize(("how", "expected"), [
    ("head", list(range(10))),
    ("tail", list(range(10, 20))),
    ("head_tail", [0, 1, 2, 3] + list(range(14, 20))),
])
def test_truncation_head_tail_and_head_plus_tail(tokenizer, how, expected):
    text = " ".join(str(i) for i in range(20))  # each number is one WordPiece token
    split = EncodedSplit([{"text": text, "label": 0}], tokenizer, max_length=12, truncation=how, head_tokens=4)
    ids = split.items[0]["input_ids"]
    assert len(ids) == 12 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == [str(i) for i in expected]


def test_short_texts_are_not_changed_by_head_tail(tokenizer):
    plain = EncodedSplit([{"text": "a short one", "label": 0}], tokenizer, 32)
    both = EncodedSplit([{"text": "a short one", "label": 0}], tokenizer, 32, truncation="head_tail")
    assert plain.items[0]["input_ids"] == both.items[0]["input_ids"]


def test_extra_fields_are_kept_for_techniques(tmp_path, write_jsonl):
    write_jsonl("train.jsonl", [{"text": "a", "label": 0, "features": [1, 2]}, {"text": "b", "label": 1, "id": 7}])
    rows = load_task(tmp_path, CFG).splits["train"]
    assert rows[0]["fields"] == {"features": [1, 2]} and rows[1]["fields"] == {"id": 7}


# --------------------------------------------------------------------------- issue 14 / 17 reader cases


def test_jsonl_lines_split_on_newline_only(tmp_path):
    # D20: U+2028, U+2029 and U+0085 are legal raw inside JSON strings; only \n, \r\n (and \r) end a line.
    rows = [{"text": f"row {i}{sep}x", "label": i % 2} for i, sep in enumerate(["\u2028", "\u2029", "\x85", ""])]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows),
                                          encoding="utf-8")
    (tmp_path / "dev.jsonl").write_text('{"text": "a", "label": 0}\n\n{oops\n', encoding="utf-8")
    assert read_records(tmp_path / "train.jsonl") == [(i + 1, r) for i, r in enumerate(rows)]
    with pytest.raises(DataError, match=r"dev.jsonl, line 3: malformed JSON"):
        load_task(tmp_path, CFG)


def test_validation_file_is_the_dev_split(tmp_path, write_jsonl):
    # issue 17: Hugging Face names the dev split 'validation'.
    write_jsonl("train.jsonl", [GOOD, GOOD1])
    write_jsonl("validation.jsonl", [GOOD1])
    task = load_task(tmp_path, CFG)
    assert task.files["dev"].name == "validation.jsonl" and task.splits["dev"][0]["label"] == 1


def test_quoted_csv_field_may_span_lines_and_keeps_its_first_line(tmp_path):
    # D1 variant: legal CSV, accepted; the row's source is the line where it starts.
    (tmp_path / "train.csv").write_text('text,label\n"first\nsecond",0\nplain,1\n')
    task = load_task(tmp_path, CFG)
    assert task.splits["train"][0] == {"text": "first\nsecond", "label": 0, "source": "train.csv:2"}
    assert task.splits["train"][1]["source"] == "train.csv:4"


def test_quoted_csv_field_spanning_very_many_lines_is_refused(tmp_path):
    # D1: a stray quote that another stray quote closes much later would swallow the rows between.
    body = "".join(f"row {i},{i % 2}\n" for i in range(200))
    (tmp_path / "train.csv").write_text(f'text,label\n"opens here,0\n{body}closes",1\nlast,0\n')
    with pytest.raises(DataError, match=r"train.csv, line 2: a quoted field runs over 202 lines \(2-203\)"):
        load_task(tmp_path, CFG)


def test_decimal_labels_can_be_class_names_when_listed(tmp_path):
    # D9: '0.0' is refused unless the recipe lists it as a class name.
    (tmp_path / "train.csv").write_text("text,label\na,0.0\nb,1.0\nc,10.0\n")
    task = load_task(tmp_path, DataConfig(label_names=["0.0", "1.0", "10.0"]))
    assert [r["label"] for r in task.splits["train"]] == [0, 1, 2]
    (tmp_path / "train.csv").write_text("text,label\na,0\nb,1.0\n")
    with pytest.raises(DataError, match=r"line 3, field 'label': .*'1.0' looks like a decimal number.*\(write 1\)"):
        load_task(tmp_path, CFG)


def test_json_and_csv_read_integer_ids_alike(tmp_path, write_jsonl):
    # D9: the same labels mean the same classes in every format.
    write_jsonl("train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": "2"}])
    (tmp_path / "dev.csv").write_text("text,label\nx, 2 \n")
    task = load_task(tmp_path, CFG)
    assert task.label_names is None and task.num_labels == 3 and task.splits["dev"][0]["label"] == 2


def test_null_text_pair_everywhere_means_a_single_text_task(tmp_path, write_jsonl):
    write_jsonl("train.jsonl", [{"text": "a", "text_pair": None, "label": 0}, {"text": "b", "label": 1}])
    assert load_task(tmp_path, CFG).is_pair is False


def test_large_label_id_is_refused_without_allocating(tmp_path, write_jsonl):
    # D16: a bound from the number of train rows, before anything is sized by the id.
    write_jsonl("train.jsonl", [GOOD, {"text": "b", "label": 10 ** 15}, GOOD1])
    with pytest.raises(DataError, match=r"line 2, field 'label': label id 10{15} is too large: train has 3 rows"):
        load_task(tmp_path, CFG)


def test_many_missing_classes_are_summarised(tmp_path, write_jsonl):
    write_jsonl("train.jsonl", [{"text": str(i), "label": 0 if i else 99} for i in range(100)])
    with pytest.raises(DataError, match=r"class\(es\) 1, 2, .*, 10 and 88 more never occur") as err:
        load_task(tmp_path, CFG)
    assert len(str(err.value)) < 400
