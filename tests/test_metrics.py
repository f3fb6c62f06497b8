from __future__ import annotations

import pytest

from plmtune.metrics import classification_metrics


def test_binary_metrics_match_hand_computation():
    labels = [1, 1, 1, 0, 0, 0, 0, 0]
    preds = [1, 1, 0, 0, 0, 0, 1, 0]
    m = classification_metrics(labels, preds, 2)
    assert m["accuracy"] == pytest.approx(6 / 8)
    # positive class: tp=2, fp=1, fn=1 -> P=R=F1=2/3; negative: tp=4, fp=1, fn=1 -> 4/5
    assert m["f1_positive"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (8-1)/sqrt(3*3*5*5)
    assert m["mcc"] == pytest.approx(7 / 15)
    assert m["n"] == 8


def test_multiclass_has_no_positive_f1_and_counts_absent_classes():
    m = classification_metrics([0, 1, 2], [0, 1, 1], 4)
    assert "f1_positive" not in m
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0 + 0) / 4)
