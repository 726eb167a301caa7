"""Use-case ranking with real-looking figures (MiniLM vs mpnet vs a paid API model)."""

from __future__ import annotations

import pytest

from engine.config import load_config
from engine.evaluation.scoring import (
    load_use_cases,
    normalise,
    rank,
    score,
)

FIGURES = {
    "minilm": {"ndcg@10": 0.645, "query_p50_ms": 12.0, "memory_mb": 86.6, "cost_per_1k": 0.0},
    "mpnet": {"ndcg@10": 0.656, "query_p50_ms": 48.0, "memory_mb": 417.7, "cost_per_1k": 0.0},
    "api-small": {
        "ndcg@10": 0.70,
        "query_p50_ms": 180.0,
        "memory_mb": 0.0,
        "cost_per_1k": 0.00042,
    },
}


def test_default_use_cases_prefer_what_they_say() -> None:
    cases = load_use_cases()
    assert {"real_time_mobile", "high_accuracy_research", "cost_sensitive_startup"} <= set(cases)
    local = {k: FIGURES[k] for k in ("minilm", "mpnet")}
    ranking, scores = rank(local, cases, "ndcg@10")
    assert ranking["real_time_mobile"] == ["minilm", "mpnet"]
    assert ranking["high_accuracy_research"] == ["mpnet", "minilm"]
    assert scores["real_time_mobile"]["minilm"] > scores["real_time_mobile"]["mpnet"]


def test_zero_cost_and_zero_memory_do_not_divide_by_zero() -> None:
    cases = load_use_cases()
    ranking, scores = rank(FIGURES, cases, "ndcg@10")
    for case, per_model in scores.items():
        assert sorted(ranking[case]) == sorted(FIGURES)
        assert all(0.0 <= s <= 1.0 for s in per_model.values()), case
    # The only paid model is the worst on cost, so the cost-heavy use case puts it last.
    assert ranking["cost_sensitive_startup"][-1] == "api-small"
    assert ranking["high_accuracy_research"][0] == "api-small"


def test_all_equal_criteria_score_one_and_ties_break_by_name() -> None:
    same = {"ndcg@10": 0.5, "query_p50_ms": 10.0, "memory_mb": 0.0, "cost_per_1k": 0.0}
    figures = {"zeta": dict(same), "alpha": dict(same), "mid": dict(same)}
    cases = load_use_cases()
    ranking, scores = rank(figures, cases, "ndcg@10")
    for case in cases:
        assert ranking[case] == ["alpha", "mid", "zeta"]
        assert all(s == pytest.approx(1.0) for s in scores[case].values())


def test_normalise_inverts_lower_is_better_and_unknown_is_worst() -> None:
    assert normalise({"a": 0.0, "b": 5.0, "c": 10.0}, higher_is_better=False) == {
        "a": 1.0,
        "b": 0.5,
        "c": 0.0,
    }
    assert normalise({"a": 2.0, "b": None}, higher_is_better=True) == {"a": 1.0, "b": 0.0}
    assert normalise({"a": float("nan"), "b": None}, higher_is_better=True) == {"a": 0.0, "b": 0.0}


def test_override_adds_and_replaces_use_cases() -> None:
    cases = load_use_cases(
        override={
            "latency_only": {"latency": 1, "description": "just speed"},
            "real_time_mobile": {"accuracy": 1.0},
        }
    )
    assert cases["latency_only"].latency == 1.0 and cases["latency_only"].accuracy == 0.0
    local = {k: FIGURES[k] for k in ("minilm", "mpnet")}
    s = score(local, cases["real_time_mobile"], "ndcg@10")
    assert s == {"minilm": 0.0, "mpnet": 1.0}


def test_use_cases_from_a_user_file_add_to_the_defaults(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("use_cases:\n  batch_archive:\n    accuracy: 0.5\n    memory: 0.5\n")
    cases = load_use_cases(load_config(path))
    assert cases["batch_archive"].memory == 0.5
    assert "real_time_mobile" in cases


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"accuracy": -1}, "weight 'accuracy' must be a number >= 0"),
        ({"accuracy": "high"}, "weight 'accuracy' must be a number >= 0"),
        ({"speed": 1}, "unknown key(s) speed"),
        ({"description": "nothing weighted"}, "all weights 0"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_use_case_is_rejected_with_its_name(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match="use case 'broken'") as info:
        load_use_cases(override={"broken": spec})  # type: ignore[dict-item]
    assert message in str(info.value)
