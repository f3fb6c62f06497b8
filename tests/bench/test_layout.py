"""Bench folder layout: names that would leave their folder are refused, and so is any path outside."""

from __future__ import annotations

import pytest

from plmtune.bench.layout import inside, name_problem, run_dir
from plmtune.errors import PlmtuneError


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", ".hidden", "", "  ", "a\0b", "x" * 101, 5, None])
def test_names_that_cannot_be_folder_names_are_refused(name):
    assert name_problem(name)


@pytest.mark.parametrize("name", ["vanilla", "llrd-0.8", "prompt+adapters", "LiST (no re-weighting)", "x" * 100])
def test_ordinary_method_names_pass(name):
    assert name_problem(name) is None


def test_a_path_outside_the_bench_folder_is_refused(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(PlmtuneError, match="outside the bench folder"):
        run_dir(out, "sst2", 8, "../../../../escaped", 1)
    assert inside(out, out / "runs" / "x") == out / "runs" / "x"


def test_a_symlink_planted_in_the_bench_folder_cannot_redirect_writes(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "runs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PlmtuneError, match="resolves to .*elsewhere"):
        run_dir(out, "sst2", 8, "vanilla", 1)


def test_run_suite_checks_every_folder_even_for_a_suite_built_without_load_suite(tmp_path):
    # Defence in depth: a Suite made in code (not read from a file) with a climbing method name.
    from shared_data import shared_dataset
    from plmtune.bench.runner import run_suite
    from plmtune.bench.suite import Method, Suite

    suite = Suite("t", tmp_path / "s.yaml", shared_dataset("sst2").parent, ("sst2",), (2,), (1,),
                  (Method("../../../../escaped", peer="majority"),), "../../../../escaped")
    out = tmp_path / "work" / "b"
    with pytest.raises(PlmtuneError, match="outside the bench folder"):
        run_suite(suite, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["b"]
    assert [p.name for p in out.iterdir()] == [".plmtune.lock"]  # no data/, no suite.json
