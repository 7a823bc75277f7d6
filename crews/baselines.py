"""Reference points for `crewbatch eval`: does the crew beat a majority vote and a 20-line model?

Both baselines train on the dataset itself, never on the ticket they predict: on the labelled
records outside the eval's sample when there are at least as many of them as eval tickets (one
model predicts them all), else cross-fitted: the eval's tickets are split into `FOLDS` folds and
each fold is predicted by a model trained on the other folds plus every record outside the eval. The majority baseline predicts the most common label of its training part; the
learned one is TF-IDF (word 1–2-grams) and logistic regression from scikit-learn, which is an
optional extra (`pip install -e ".[eval]"`): without it that baseline is skipped, and said so.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

FOLDS = 5
INSTALL = 'pip install -e ".[eval]"'


def _folds(n: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [sorted(order[i::FOLDS]) for i in range(min(FOLDS, n))]


def cross_fit(texts: list[str], labels: list, pool_texts: list[str], pool_labels: list,
              fit: Callable[[list[str], list], Callable[[list[str]], list]], seed: int = 0
              ) -> list:
    """Each eval ticket's prediction from `fit` trained on the pool alone if it is large enough,
    else on the other folds and the pool. A ticket without a label (None) is predicted but not
    trained on."""
    predictions: list = [None] * len(texts)
    labelled = sum(1 for y in pool_labels if y is not None)
    folds = [list(range(len(texts)))] if labelled >= len(texts) else _folds(len(texts), seed)
    for fold in folds:
        held = set(fold)
        train = [(t, y) for i, (t, y) in enumerate(zip(texts, labels, strict=True))
                 if i not in held and y is not None] if len(folds) > 1 else []
        train += [(t, y) for t, y in zip(pool_texts, pool_labels, strict=True) if y is not None]
        if not train:
            continue
        predict = fit([t for t, _ in train], [y for _, y in train])
        for i, p in zip(fold, predict([texts[i] for i in fold]), strict=True):
            predictions[i] = p
    return predictions


def majority(_texts: list[str], labels: list) -> Callable[[list[str]], list]:
    # Ties go to the label seen first, so the result does not depend on hash order.
    top = Counter(labels).most_common(1)[0][0]
    return lambda texts: [top] * len(texts)


def learned_available() -> str | None:
    """None if scikit-learn can be imported, else why not (for the report)."""
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:
        return f"scikit-learn is not installed ({exc}); `{INSTALL}` adds it"
    return None


def tfidf_logreg(texts: list[str], labels: list) -> Callable[[list[str]], list]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    distinct = list(dict.fromkeys(labels))
    if len(distinct) == 1:  # logistic regression needs two classes
        return lambda batch: [distinct[0]] * len(batch)
    # Labels as strings (a yes/no label is a bool), mapped back after predicting.
    by_name = {str(y): y for y in distinct}
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          LogisticRegression(max_iter=2000, C=5.0))
    model.fit(texts, [str(y) for y in labels])
    return lambda batch: [by_name[p] for p in model.predict(batch)]
