"""Test-only estimators the server must load through the one model format (skops).

skops refuses types it was not told to trust, so these are registered with
``extra_trusted=[TRUSTED]``; the server process imports this module by name
(it runs from the repository root, where ``tests`` is a package).
"""

from __future__ import annotations

import os
import time
from typing import Any

from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

TRUSTED = "tests.serving._estimators.FailSwitchClassifier"


class FailSwitchClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A logistic regression that fails while its switch file exists.

    The file's content picks the failure: ``raise`` (the default) raises, and
    ``sleep:<seconds>`` hangs that long (a timeout for the breaker).
    """

    def __init__(self, switch_path: str = "") -> None:
        self.switch_path = switch_path

    def fit(self, X: Any, y: Any) -> FailSwitchClassifier:
        self.inner_ = LogisticRegression(max_iter=2000).fit(X, y)
        self.classes_ = self.inner_.classes_
        return self

    def _switch(self) -> None:
        if not self.switch_path or not os.path.exists(self.switch_path):
            return
        with open(self.switch_path) as fh:
            mode = fh.read().strip() or "raise"
        if mode.startswith("sleep:"):
            time.sleep(float(mode.split(":", 1)[1]))
            return
        raise RuntimeError(f"switched off by {self.switch_path}")

    def predict_proba(self, X: Any) -> Any:
        self._switch()
        return self.inner_.predict_proba(X)

    def predict(self, X: Any) -> Any:
        self._switch()
        return self.inner_.predict(X)
