"""The demo's batch feature views, computed from a transaction history.

``user_stats`` (a user's 30-day mean amount and count) and ``merchant_risk`` (a merchant
category's smoothed fraud rate). The daily materialization flow loads them into the
feature store, and the demo fraud model is trained on them, so both use this code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def user_stats(transactions: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per user: mean amount and number of transactions in the window."""
    grouped = transactions.groupby("user_id")["amount"].agg(["mean", "count"])
    return {
        str(user): {"avg_amount_30d": float(row["mean"]), "txn_count_30d": int(row["count"])}
        for user, row in grouped.iterrows()
    }


def merchant_risk(
    transactions: pd.DataFrame, prior_weight: float = 50.0
) -> dict[str, dict[str, float]]:
    """Per merchant category: fraud rate, smoothed toward the overall rate.

    ``(frauds + prior_weight * overall) / (count + prior_weight)``, so a category with few
    transactions is not scored 0 or 1 by chance.
    """
    fraud = transactions["is_fraud"].astype(float)
    overall = float(fraud.mean())
    grouped = fraud.groupby(transactions["merchant_category"]).agg(["sum", "count"])
    return {
        str(category): {
            "risk_score": (float(row["sum"]) + prior_weight * overall)
            / (float(row["count"]) + prior_weight)
        }
        for category, row in grouped.iterrows()
    }
