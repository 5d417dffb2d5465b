"""User-level hashing, shadow-then-canary and the model format, judged on hand-built
samples and facts."""

from __future__ import annotations

from monitoring.decision_format import format_rows
from monitoring.decision_model import (
    Evidence,
    ParityFacts,
    RolloutFacts,
    Row,
    ShadowFacts,
    Verdict,
)
from monitoring.decision_rollout import hashing_rows, rollout_rows
from monitoring.scrape import Sample
from services.settings import DecisionSettings, RolloutSettings
from tests.monitoring.samples import model_entry, sample, scrape

S, GATES = DecisionSettings(), RolloutSettings()


def _units(user: int, request: int) -> list[Sample]:
    return [
        sample("servekit_assignments_total", user, model="m", unit="user"),
        sample("servekit_assignments_total", request, model="m", unit="request"),
    ]


def test_mostly_anonymous_traffic_questions_user_level_hashing() -> None:
    ev = Evidence(scrapes=[scrape(0.0, _units(10, 10)), scrape(10.0, _units(30, 90))])
    ev.rollouts = [RolloutFacts("m", "ab", "1", "2", 50.0)]
    (row,) = hashing_rows(ev, S)
    assert row.verdict is Verdict.RECONSIDER and row.measured == 0.8  # 80 of the 100 new
    assert "(ab running now)" in row.action and "user_id" in row.action


def test_identified_traffic_is_fine_and_little_traffic_is_not_enough() -> None:
    ev = Evidence(scrapes=[scrape(0.0, _units(90, 10))])
    (row,) = hashing_rows(ev, S)
    assert row.verdict is Verdict.FINE and row.measured == 0.1
    (few,) = hashing_rows(Evidence(scrapes=[scrape(0.0, _units(3, 3))]), S)
    assert few.verdict is Verdict.NO_DATA


def test_without_the_counter_the_prediction_stream_is_read() -> None:
    ev = Evidence(scrapes=[scrape(0.0)], logged_units={"m": {"request": 70, "user": 30}})
    (row,) = hashing_rows(ev, S)
    assert row.verdict is Verdict.RECONSIDER and "prediction-stream" in row.basis
    (none,) = hashing_rows(Evidence(scrapes=[scrape(0.0)]), S)
    assert none.verdict is Verdict.NO_DATA and "SERVEKIT_ROLLOUT_ENABLED" in none.action


def _shadow(result: str, n: int) -> Sample:
    return sample("servekit_shadow_requests_total", n, result=result)


def _rows(ev: Evidence, signal: str) -> list[Row]:
    return [r for r in rollout_rows(ev, S, GATES) if r.signal.startswith(signal)]


def test_shadow_queue_drops() -> None:
    first = [_shadow("sent", 0), _shadow("dropped", 0)]
    last = [_shadow("sent", 90), _shadow("dropped", 10), _shadow("errors", 2)]
    (row,) = _rows(Evidence(scrapes=[scrape(0.0, first), scrape(10.0, last)]), "shadow queue")
    assert row.verdict is Verdict.RECONSIDER and row.measured == 0.1
    assert "SHADOW_QUEUE" in row.action and "2 failed" in row.value
    calm = [_shadow("sent", 100), _shadow("dropped", 0)]
    (ok,) = _rows(Evidence(scrapes=[scrape(0.0, first), scrape(10.0, calm)]), "shadow queue")
    assert ok.verdict is Verdict.FINE
    (idle,) = _rows(Evidence(scrapes=[scrape(0.0, first)]), "shadow queue")
    assert idle.verdict is Verdict.NO_DATA and "no rollout state" in idle.action
    (off,) = _rows(Evidence(scrapes=[scrape(0.0)]), "shadow queue")
    assert "routing is off" in off.action


def _facts(identical: int = 100, candidate_ms: float = 1.0, errors: int = 0) -> ShadowFacts:
    return ShadowFacts(
        "m", "2", 100, errors, identical, (1.0,) * 100, (candidate_ms,) * (100 - errors)
    )


def test_shadow_latency_against_the_gate() -> None:
    slow = Evidence(scrapes=[scrape(0.0)], shadows=[_facts(candidate_ms=5.0)])
    (row,) = _rows(slow, "shadow latency")
    assert row.verdict is Verdict.RECONSIDER and "reject" in row.action
    fine = Evidence(scrapes=[scrape(0.0)], shadows=[_facts(candidate_ms=1.5)])  # within 1 ms slack
    assert _rows(fine, "shadow latency")[0].verdict is Verdict.FINE


def test_identical_shadow_answers_make_a_canary_pointless() -> None:
    canary = [RolloutFacts("m", "canary", "1", "2", 5.0, promotions=3, blue_green=1)]
    ev = Evidence(scrapes=[scrape(0.0)], shadows=[_facts()], rollouts=canary)
    (row,) = _rows(ev, "shadow answers identical")
    assert row.verdict is Verdict.RECONSIDER and "servekit rollout promote m" in row.action
    assert "3 promotions, 1 blue-green" in row.basis
    ev.rollouts = [RolloutFacts("m", "shadow", "1", "2", 0.0)]
    assert _rows(ev, "shadow answers identical")[0].verdict is Verdict.FINE
    differ = Evidence(scrapes=[scrape(0.0)], shadows=[_facts(identical=90)])
    assert "answers differ" in _rows(differ, "shadow answers identical")[0].action


def test_identical_answers_the_rollout_flow_cannot_see_are_flagged() -> None:
    facts = ShadowFacts(
        "m", "2", 100, 0, 100, (1.0,) * 100, (1.0,) * 100, 100, "primary: p; candidate: l, p"
    )
    (row,) = _rows(Evidence(scrapes=[scrape(0.0)], shadows=[facts]), "shadow answers identical")
    assert row.verdict is Verdict.RECONSIDER and "primary: p; candidate: l, p" in row.action


def test_a_rollout_without_pairs_is_not_enough_data() -> None:
    ev = Evidence(scrapes=[scrape(0.0)], rollouts=[RolloutFacts("m", "shadow", "1", "2", 0.0)])
    (row,) = _rows(ev, "shadow answers identical")
    assert row.verdict is Verdict.NO_DATA


def _format(ev: Evidence) -> dict[str, Row]:
    return {r.signal + ":" + r.subject: r for r in format_rows(ev)}


def test_parity_failures_in_the_registry() -> None:
    parity = [
        ParityFacts("m", "1", "onnx", {"onnx": (True, 0.1)}),
        ParityFacts("m", "2", "onnx", {"onnx": (True, 0.2), "int8": (False, 3.0)}),
        ParityFacts("plain", "1", "onnx", None),
    ]
    models = [model_entry("m"), model_entry("plain")]
    rows = _format(Evidence(scrapes=[scrape(0.0)], models=models, parity=parity))
    failed = rows["conversion parity failures:m"]
    assert failed.verdict is Verdict.RECONSIDER and "v2 int8" in failed.action
    assert "300% of tolerance" in failed.value
    assert rows["conversion parity failures:plain"].verdict is Verdict.NO_DATA
    parity[1] = ParityFacts("m", "2", "onnx", {"onnx": (True, 0.2)}, "no CUDA GPU")
    rows = _format(Evidence(scrapes=[scrape(0.0)], models=models, parity=parity))
    assert rows["conversion parity failures:m"].verdict is Verdict.FINE
    assert "TensorRT skipped: no CUDA GPU" in rows["conversion parity failures:m"].basis


def test_a_cpu_only_runtime_and_tensorrt_engines() -> None:
    cpu = _format(Evidence(scrapes=[scrape(0.0)], models=[model_entry("m")]))
    assert cpu["serving runtime:"].verdict is Verdict.FINE
    assert "sane choice" in cpu["serving runtime:"].action
    engines = [model_entry("m"), model_entry("m-trt", fmt="tensorrt", loaded=False)]
    rows = _format(Evidence(scrapes=[scrape(0.0)], models=engines))
    assert rows["serving runtime:"].verdict is Verdict.RECONSIDER
    gpu = [model_entry("m", provider="CUDAExecutionProvider")]
    assert _format(Evidence(scrapes=[scrape(0.0)], models=gpu))["serving runtime:"].verdict is (
        Verdict.FINE
    )
    bare = _format(Evidence(scrapes=[scrape(0.0)], registry_ok=False))
    assert bare["serving runtime:"].verdict is Verdict.NO_DATA
    assert bare["conversion parity failures:"].verdict is Verdict.NO_DATA
