"""The promotion gate at the edges of its minimum (a maximum for error metrics) and tolerance."""

from __future__ import annotations

import pytest

from flows.pipeline.exceptions import PromotionRejected
from flows.pipeline.stages.evaluate import check, gate


def test_without_a_champion_only_the_minimum_counts_and_reaching_it_passes() -> None:
    at = check("roc_auc", 0.75, champion=None, minimum=0.75, tolerance=0.0)
    below = check("roc_auc", 0.7499, champion=None, minimum=0.75, tolerance=0.0)
    assert (at.passed, at.required, at.reason) == (True, 0.75, "no champion yet")
    assert (below.passed, below.required, below.reason) == (False, 0.75, "below the configured minimum")


def test_a_challenger_may_trail_the_champion_by_the_tolerance_and_no_more() -> None:
    at = check("accuracy", 0.5, champion=0.75, minimum=0.25, tolerance=0.25)
    below = check("accuracy", 0.4999, champion=0.75, minimum=0.25, tolerance=0.25)
    assert (at.passed, at.required, at.champion) == (True, 0.5, 0.75)
    assert (below.passed, below.required) == (False, 0.5)
    assert below.reason == "champion scores 0.7500 on the same holdout"


def test_the_minimum_still_binds_when_the_champion_minus_tolerance_is_lower() -> None:
    decision = check("f1_macro", 0.375, champion=0.5, minimum=0.4, tolerance=0.25)
    assert (decision.passed, decision.required) == (False, 0.4)
    assert decision.reason == "below the configured minimum"
    assert check("f1_macro", 0.4, champion=0.5, minimum=0.4, tolerance=0.25).passed


@pytest.mark.parametrize("metric", ["rmse", "mae", "log_loss"])
def test_for_error_metrics_the_minimum_is_a_maximum_and_lower_is_better(metric: str) -> None:
    assert check(metric, 2.0, champion=None, minimum=2.0, tolerance=0.0).passed
    above = check(metric, 2.5, champion=None, minimum=2.0, tolerance=0.0)
    assert (above.passed, above.required, above.reason) == (False, 2.0, "above the configured maximum")
    assert check(metric, 1000.0, champion=None, minimum=0.0, tolerance=0.0).passed  # 0 = no maximum
    assert check(metric, 1.5, champion=1.0, minimum=0.0, tolerance=0.5).passed
    worse = check(metric, 1.75, champion=1.0, minimum=0.0, tolerance=0.5)
    assert (worse.passed, worse.required) == (False, 1.5)


def test_gate_raises_with_both_numbers_or_returns_the_decision() -> None:
    with pytest.raises(PromotionRejected, match=r"roc_auc=0\.9000, needed >= 0\.9200") as caught:
        gate("roc_auc", 0.9, champion=0.93, minimum=0.8, tolerance=0.01)
    rejected = caught.value
    assert (rejected.metric, rejected.challenger, rejected.required) == ("roc_auc", 0.9, pytest.approx(0.92))
    assert gate("roc_auc", 0.95, champion=0.93, minimum=0.8, tolerance=0.01).passed
