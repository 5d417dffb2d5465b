"""Feature views: declarations, the registry, names resolved or refused."""

from __future__ import annotations

import pytest

from services.errors import InvalidInputError
from services.settings import FeatureSettings
from services.state.features import FeatureRegistry, FeatureView


def test_registry_from_settings_defaults_and_json() -> None:
    demo = FeatureRegistry.from_settings(FeatureSettings())
    assert set(demo.views) == {"user_stats", "merchant_risk", "user_activity"}
    assert demo.entities == {"user", "merchant_category"}
    assert demo.event_fields == {"amount"}
    custom = FeatureRegistry.from_settings(
        FeatureSettings(
            views=[
                {
                    "name": "shop",
                    "entity": "shop",
                    "kind": "batch",
                    "max_staleness_s": 10,
                    "features": [{"name": "rating", "default": 3.0}],
                }
            ]
        )
    )
    assert custom.view("shop").spec("rating").default == 3.0


def test_bad_view_declarations_and_names_are_rejected(views: FeatureRegistry) -> None:
    with pytest.raises(ValueError, match="needs an agg"):
        FeatureView.model_validate(
            {"name": "rt", "entity": "user", "kind": "realtime", "max_staleness_s": 1,
             "features": [{"name": "x"}]}
        )  # fmt: skip
    with pytest.raises(InvalidInputError) as info:
        views.resolve(["user_stats.nope"])
    assert info.value.field == "user_stats.nope"
