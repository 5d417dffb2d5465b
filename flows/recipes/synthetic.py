"""A seeded synthetic transaction generator: the demo fraud model's world.

Used to train the demo model, to replay traffic in benchmarks, to materialize batch
features and to test drift detection (``Shift`` moves the distribution on purpose).

Each user has a typical spend (log-normal) and a home channel; fraud is rare (~3 %) and
learnable: large amounts relative to the user's typical spend, risky merchant categories,
night hours and the online channel all raise its odds.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

MERCHANT_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurant",
    "fuel",
    "travel",
    "electronics",
    "fashion",
    "gaming",
    "crypto",
)
CHANNELS: tuple[str, ...] = ("pos", "online", "atm")

# Log-odds added to a transaction's fraud score by category; crypto and gaming are risky.
_CATEGORY_RISK = np.array([-1.0, -0.8, -0.6, 0.2, 0.6, 0.0, 1.2, 1.8])
_CATEGORY_WEIGHTS = np.array([0.28, 0.2, 0.14, 0.08, 0.1, 0.12, 0.05, 0.03])
_CHANNEL_RISK = np.array([-0.6, 0.8, 0.2])


@dataclasses.dataclass(frozen=True)
class Shift:
    """A deliberate change of the distribution, for drift tests and canary scenarios.

    Attributes:
        amount_scale: multiplies every amount.
        online_share: if set, the probability of the online channel.
        night_share: extra probability mass moved to hours 0-5.
        fraud_rate_scale: multiplies the fraud odds.
    """

    amount_scale: float = 1.0
    online_share: float | None = None
    night_share: float = 0.0
    fraud_rate_scale: float = 1.0


class TransactionGenerator:
    """Seeded generator of card transactions with a learnable fraud label.

    Args:
        seed: the random seed; the same seed gives the same users and records.
        n_users: size of the user population.
        shift: an optional distribution shift.
    """

    def __init__(self, seed: int = 0, n_users: int = 1000, shift: Shift | None = None) -> None:
        self.seed = seed
        self.n_users = n_users
        self.shift = shift or Shift()
        rng = np.random.default_rng(seed)
        self._user_typical = rng.lognormal(mean=3.6, sigma=0.7, size=n_users)
        self._user_online = rng.beta(2, 3, size=n_users)
        self._rng = np.random.default_rng(seed + 1)

    def user_id(self, index: int) -> str:
        """The id of user ``index``."""
        return f"u{index:06d}"

    def _sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shift = self.shift
        users = rng.integers(0, self.n_users, size=n)
        typical = self._user_typical[users]
        category = rng.choice(len(MERCHANT_CATEGORIES), size=n, p=_CATEGORY_WEIGHTS)
        if shift.online_share is not None:
            p_online = np.full(n, shift.online_share)
        else:
            p_online = self._user_online[users]
        u = rng.random(n)
        channel = np.where(u < p_online, 1, np.where(u < p_online + 0.07, 2, 0))
        hour = rng.choice(24, size=n, p=_hour_weights(shift.night_share))
        ratio = rng.lognormal(mean=0.0, sigma=0.6, size=n)
        # Fraudsters spend big: a second mixture component drawn per row.
        logit = (
            -4.3
            + _CATEGORY_RISK[category]
            + _CHANNEL_RISK[channel]
            + np.where(hour < 6, 1.0, 0.0)
            + np.log(max(shift.fraud_rate_scale, 1e-9))
        )
        base_p = 1 / (1 + np.exp(-logit))
        is_fraud = rng.random(n) < np.clip(base_p * 1.6, 0, 1)
        ratio = np.where(is_fraud, ratio * rng.lognormal(1.1, 0.5, size=n), ratio)
        amount = np.round(typical * ratio * shift.amount_scale, 2)
        return {
            "user": users,
            "amount": amount,
            "category": category,
            "hour": hour,
            "channel": channel,
            "is_fraud": is_fraud,
        }

    def records(
        self, n: int, *, with_label: bool = False, seed: int | None = None
    ) -> list[dict[str, Any]]:
        """``n`` request records, as a client would send them to ``/predict``.

        Args:
            n: how many.
            with_label: add ``is_fraud`` (for training and outcome feedback).
            seed: draw from a fresh generator with this seed instead of the running one.
        """
        rng = self._rng if seed is None else np.random.default_rng(seed)
        s = self._sample(n, rng)
        out: list[dict[str, Any]] = []
        for i in range(n):
            rec: dict[str, Any] = {
                "user_id": self.user_id(int(s["user"][i])),
                "amount": float(s["amount"][i]),
                "merchant_category": MERCHANT_CATEGORIES[int(s["category"][i])],
                "hour": int(s["hour"][i]),
                "channel": CHANNELS[int(s["channel"][i])],
            }
            if with_label:
                rec["is_fraud"] = bool(s["is_fraud"][i])
            out.append(rec)
        return out

    def history(
        self,
        days: int = 30,
        n: int = 50_000,
        *,
        end: datetime | None = None,
        seed: int | None = None,
    ) -> pd.DataFrame:
        """A transaction history over ``days`` days ending at ``end`` (default: now, UTC).

        Columns: user_id, amount, merchant_category, hour, channel, timestamp, is_fraud.
        """
        import pandas as pd

        rng = np.random.default_rng(self.seed + 7 if seed is None else seed)
        s = self._sample(n, rng)
        end = end or datetime.now(UTC)
        day = rng.integers(0, days, size=n)
        seconds = s["hour"] * 3600 + rng.integers(0, 3600, size=n)
        start = (end - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
        ts = pd.to_datetime(start) + pd.to_timedelta(day * 86400 + seconds, unit="s")
        frame = pd.DataFrame(
            {
                "user_id": [self.user_id(int(u)) for u in s["user"]],
                "amount": s["amount"],
                "merchant_category": [MERCHANT_CATEGORIES[int(c)] for c in s["category"]],
                "hour": s["hour"].astype("int64"),
                "channel": [CHANNELS[int(c)] for c in s["channel"]],
                "timestamp": ts,
                "is_fraud": s["is_fraud"],
            }
        )
        return frame.sort_values("timestamp", ignore_index=True)


def _hour_weights(night_share: float) -> np.ndarray:
    """Hour-of-day distribution: a day-time hump, plus ``night_share`` moved to 0-5h."""
    hours = np.arange(24)
    w = np.exp(-0.5 * ((hours - 14) / 4.5) ** 2) + 0.05
    w = w / w.sum()
    if night_share > 0:
        night = (hours < 6).astype(float)
        w = (1 - night_share) * w + night_share * night / night.sum()
    return w / w.sum()
