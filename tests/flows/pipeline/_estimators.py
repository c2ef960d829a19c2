"""Estimators for pipeline tests, named in test configs by import path."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sklearn.ensemble import HistGradientBoostingClassifier


class SlowHistGradientBoostingClassifier(HistGradientBoostingClassifier):
    """Writes ``$SELFHEAL_TEST_FIT_MARKER`` when fit starts, then takes its time."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:  # noqa: N803
        marker = os.environ.get("SELFHEAL_TEST_FIT_MARKER")
        if marker:
            Path(marker).write_text(str(os.getpid()))
            time.sleep(float(os.environ.get("SELFHEAL_TEST_FIT_SLEEP", "0")))
        return super().fit(X, y, sample_weight=sample_weight)


class BrokenClassifier(HistGradientBoostingClassifier):
    """Always fails to fit, like a stage that keeps failing after its retries."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:  # noqa: N803
        raise RuntimeError("training blew up")
