"""Classification metrics: accuracy, macro-F1, MCC, and F1 of the positive class (binary)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def classification_metrics(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> dict[str, float]:
    labels, preds = np.asarray(labels), np.asarray(preds)
    classes = list(range(num_labels))
    out = {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", labels=classes, zero_division=0)),
        "mcc": float(matthews_corrcoef(labels, preds)),
    }
    if num_labels == 2:
        out["f1_positive"] = float(f1_score(labels, preds, pos_label=1, average="binary", zero_division=0))
    out["n"] = int(len(labels))
    return out
