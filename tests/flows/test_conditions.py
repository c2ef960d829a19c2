"""Release conditions: arithmetic over the measured names, nothing else."""

from __future__ import annotations

import pytest

from flows.conditions import holds, parse


def test_conditions_are_arithmetic_over_the_measured_names() -> None:
    values = {"challenger": 12.0, "champion": 10.0, "result": 2.0}
    assert holds("challenger <= champion * 1.25 + 5", values)
    assert holds("result > 1 and not result > 3", values)
    assert holds("abs(-result) == 2 and 0 < result <= max(2, 1)", values)
    assert not holds("result < 0 or challenger < champion", values)
    for bad in ("__import__('os')", "result.real > 0", "values['result'] > 0", "x > 1", "'a' < 'b'", "result >"):
        with pytest.raises(ValueError):
            parse(bad)
