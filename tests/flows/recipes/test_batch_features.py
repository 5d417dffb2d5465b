"""The demo's batch feature views, as the materialization and the demo model compute them."""

from __future__ import annotations

import pandas as pd
import pytest

from flows.recipes.batch_features import merchant_risk, user_stats


def test_user_stats_are_mean_amount_and_count() -> None:
    frame = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "amount": [10.0, 30.0, 5.0]})
    assert user_stats(frame) == {
        "u1": {"avg_amount_30d": 20.0, "txn_count_30d": 2},
        "u2": {"avg_amount_30d": 5.0, "txn_count_30d": 1},
    }


def test_merchant_risk_is_smoothed_toward_the_overall_rate() -> None:
    frame = pd.DataFrame(
        {"merchant_category": ["a"] * 2 + ["b"] * 98, "is_fraud": [True] * 2 + [False] * 98}
    )
    risk = merchant_risk(frame, prior_weight=50.0)
    assert risk["a"]["risk_score"] == pytest.approx((2 + 50 * 0.02) / 52)
    assert risk["b"]["risk_score"] == pytest.approx((0 + 50 * 0.02) / 148)
    assert merchant_risk(frame, prior_weight=0.0)["a"]["risk_score"] == 1.0
