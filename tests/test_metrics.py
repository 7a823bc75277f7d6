"""The eval's metric functions against hand-computed examples and against scikit-learn."""

from __future__ import annotations

import random

import pytest

from crews import metrics

GOLD = ["a", "a", "a", "b", "b", "c"]
PRED = ["a", "a", "b", "b", "c", "c"]


def test_hand_computed_example():
    assert metrics.accuracy(GOLD, PRED) == pytest.approx(4 / 6)
    per = metrics.per_class(GOLD, PRED, ["a", "b", "c"])
    # a: 2 of 2 predicted right, 2 of 3 found; b: 1 of 2, 1 of 2; c: 1 of 2, 1 of 1
    assert per["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert per["b"] == pytest.approx({"precision": .5, "recall": .5, "f1": .5, "support": 2})
    assert per["c"] == pytest.approx({"precision": .5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert metrics.macro_f1(GOLD, PRED) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert metrics.confusion(GOLD, PRED, ["a", "b", "c"]) == [[2, 1, 0, 0], [0, 1, 1, 0],
                                                              [0, 0, 1, 0]]


def test_no_answer_counts_against_recall_and_is_no_class():
    gold, pred = ["a", "b"], ["a", metrics.NONE]
    assert metrics.classes(gold, pred) == ["a", "b"]
    assert metrics.confusion(gold, pred, ["a", "b"]) == [[1, 0, 0], [0, 0, 1]]
    assert metrics.per_class(gold, pred, ["a", "b"])["b"]["recall"] == 0.0
    assert metrics.macro_f1(gold, pred) == pytest.approx(0.5)


def test_a_class_nobody_predicted_has_precision_zero_and_binary_counts():
    assert metrics.per_class(["a", "b"], ["a", "a"], ["a", "b"])["b"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    b = metrics.binary([True, True, False, False, True], [True, False, True, False, None])
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == (1, 1, 2, 1)
    assert b["precision"] == 0.5 and b["recall"] == pytest.approx(1 / 3)


def test_the_same_numbers_as_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = random.Random(4)
    for _ in range(20):
        n = rng.randint(1, 60)
        gold = [rng.choice("abcd") for _ in range(n)]
        pred = [rng.choice("abcde") for _ in range(n)]
        labels = metrics.classes(gold, pred)
        assert metrics.accuracy(gold, pred) == pytest.approx(sk.accuracy_score(gold, pred))
        assert metrics.macro_f1(gold, pred) == pytest.approx(
            sk.f1_score(gold, pred, labels=labels, average="macro", zero_division=0))
        p, r, f, s = sk.precision_recall_fscore_support(gold, pred, labels=labels,
                                                        zero_division=0)
        per = metrics.per_class(gold, pred, labels)
        for i, label in enumerate(labels):
            assert per[label] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i],
                                                "support": s[i]})
        matrix = sk.confusion_matrix(gold, pred, labels=labels).tolist()
        assert [row[:-1] for row in metrics.confusion(gold, pred, labels)] == matrix
        yes = [g in "ab" for g in gold]
        said = [p in "ab" for p in pred]
        b = metrics.binary(yes, said)
        assert b["precision"] == pytest.approx(sk.precision_score(yes, said, zero_division=0))
        assert b["recall"] == pytest.approx(sk.recall_score(yes, said, zero_division=0))
