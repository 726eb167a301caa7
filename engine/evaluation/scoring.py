"""Use-case ranking: weighted, min-max normalised criteria, so no unit dominates another.

Normalising per criterion keeps zeros harmless (a free model or one with no measured memory never
divides by anything), all-equal criteria give everyone 1.0, and ties break by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import Config

CRITERIA = ("accuracy", "latency", "memory", "cost")
# Figure each criterion reads; accuracy is the task's headline metric, given per evaluation.
FIGURES = {"latency": "query_p50_ms", "memory": "memory_mb", "cost": "cost_per_1k"}


@dataclass(frozen=True)
class UseCase:
    name: str
    accuracy: float
    latency: float
    memory: float
    cost: float
    description: str = ""

    def weight(self, criterion: str) -> float:
        return float(getattr(self, criterion))


def _use_case(name: str, spec: Any, where: str) -> UseCase:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: use case '{name}' must be a mapping of weights")
    unknown = set(spec) - {*CRITERIA, "description"}
    if unknown:
        raise ValueError(
            f"{where}: use case '{name}' has unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(CRITERIA)}, description"
        )
    weights: dict[str, float] = {}
    for criterion in CRITERIA:
        value = spec.get(criterion, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(
                f"{where}: use case '{name}' weight '{criterion}' must be a number >= 0, "
                f"got {value!r}"
            )
        weights[criterion] = float(value)
    if not any(weights.values()):
        raise ValueError(f"{where}: use case '{name}' has all weights 0; give one a weight > 0")
    return UseCase(name=name, description=str(spec.get("description", "")), **weights)


def load_use_cases(
    config: Config | None = None, override: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, UseCase]:
    """The config's `use_cases` (defaults.yaml's, unless a user file changes them), then
    `override`; later ones win by name."""
    if config is None:
        from engine.config import load_config

        config = load_config(use_user_file=False)
    merged: dict[str, tuple[Any, str]] = {
        name: (spec, config.where("use_cases", name))
        for name, spec in (config.raw.get("use_cases") or {}).items()
    }
    for name, spec in (override or {}).items():
        merged[name] = (spec, "use-case override")
    return {name: _use_case(name, spec, where) for name, (spec, where) in merged.items()}


def normalise(values: Mapping[str, float | None], *, higher_is_better: bool) -> dict[str, float]:
    """Min-max to [0, 1], best = 1; all-equal gives 1.0; unknown (None, NaN) counts as worst."""
    known = {n: float(v) for n, v in values.items() if v is not None and math.isfinite(v)}
    out = {n: 0.0 for n in values}
    if not known:
        return out
    lo, hi = min(known.values()), max(known.values())
    span = hi - lo
    for name, value in known.items():
        if span <= 1e-12 * max(1.0, abs(hi)):
            out[name] = 1.0
        elif higher_is_better:
            out[name] = (value - lo) / span
        else:
            out[name] = (hi - value) / span
    return out


def score(
    figures: Mapping[str, Mapping[str, Any]], use_case: UseCase, accuracy_key: str
) -> dict[str, float]:
    """Weighted mean of normalised criteria per model, in [0, 1]."""
    normalised: dict[str, dict[str, float]] = {}
    for criterion in CRITERIA:
        key = accuracy_key if criterion == "accuracy" else FIGURES[criterion]
        values = {name: f.get(key) for name, f in figures.items()}
        normalised[criterion] = normalise(values, higher_is_better=criterion == "accuracy")
    total = sum(use_case.weight(c) for c in CRITERIA)
    return {
        name: sum(use_case.weight(c) * normalised[c][name] for c in CRITERIA) / total
        for name in figures
    }


def rank(
    figures: Mapping[str, Mapping[str, Any]],
    use_cases: Mapping[str, UseCase],
    accuracy_key: str,
) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
    """Best first per use case, ties by model name; also the scores behind each order."""
    ranking: dict[str, list[str]] = {}
    scores: dict[str, dict[str, float]] = {}
    for name, use_case in use_cases.items():
        s = score(figures, use_case, accuracy_key)
        scores[name] = s
        ranking[name] = sorted(s, key=lambda m, s=s: (-round(s[m], 12), m))
    return ranking, scores
