"""Classification metrics for `crewbatch eval`, in plain Python: one implementation, no numpy.

Accuracy, per-class precision / recall / F1 / support, macro-F1, the confusion matrix, and
precision / recall of a yes/no decision. The conventions are scikit-learn's (a class nobody
predicted has precision 0, not an error; macro-F1 is the unweighted mean over the classes), so
tests check these functions against hand-computed examples and, where it is installed, against
sklearn.metrics. `NONE` marks a ticket the crew gave no answer for (it failed): it counts against
the recall of the ticket's true class and is never a class of its own.
"""

from __future__ import annotations

from collections import Counter

NONE = "(none)"


def accuracy(gold: list, pred: list) -> float:
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold) if gold else 0.0


def classes(gold: list, pred: list) -> list:
    """The classes scored: every true and predicted value but NONE, true classes first."""
    seen = dict.fromkeys(gold)
    seen.update(dict.fromkeys(p for p in pred if p != NONE))
    return list(seen)


def confusion(gold: list, pred: list, labels: list) -> list[list[int]]:
    """matrix[i][j]: tickets of true class labels[i] predicted as labels[j]; a last column
    counts the ones with no prediction (NONE)."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    for g, p in zip(gold, pred, strict=True):
        if g in index:
            matrix[index[g]][index.get(p, len(labels)) if p != NONE else len(labels)] += 1
    return matrix


def per_class(gold: list, pred: list, labels: list) -> dict:
    """{class: {precision, recall, f1, support}}."""
    pairs = list(zip(gold, pred, strict=True))
    support = Counter(gold)
    predicted = Counter(pred)
    hits = Counter(g for g, p in pairs if g == p)
    out = {}
    for label in labels:
        precision = hits[label] / predicted[label] if predicted[label] else 0.0
        recall = hits[label] / support[label] if support[label] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": precision, "recall": recall, "f1": f1,
                      "support": support[label]}
    return out


def macro_f1(gold: list, pred: list, labels: list | None = None) -> float:
    labels = labels if labels is not None else classes(gold, pred)
    scores = per_class(gold, pred, labels)
    return sum(s["f1"] for s in scores.values()) / len(scores) if scores else 0.0


def binary(gold: list[bool], pred: list) -> dict:
    """Precision and recall of predicting True (a prediction of None is not True)."""
    tp = sum(1 for g, p in zip(gold, pred, strict=True) if g and p is True)
    fp = sum(1 for g, p in zip(gold, pred, strict=True) if not g and p is True)
    fn = sum(1 for g, p in zip(gold, pred, strict=True) if g and p is not True)
    tn = len(gold) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn,
            "tn": tn, "support": tp + fn}
