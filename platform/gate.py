"""The promotion gate: may a challenger take `@champion`? A pure decision over two metric dicts.

Semantics follow MLflow's `MetricThreshold` / `validate_evaluation_results`: `threshold` is an
absolute bar (>= when greater is better, <= otherwise) and a metric the challenger lacks fails.
Where MLflow asks for a minimum *improvement* over the baseline, a registry gate asks for
*non-regression*: the challenger may be worse than the champion by at most `margin`
(0: equal or better passes). A champion lacking a gated metric fails the comparison, as in
MLflow (the versions cannot be compared: evaluate the champion, or promote with --force).

Values, thresholds and margins are compared as decimals rounded to 12 significant digits
(`exact`): binary floats would make 0.52 − 0.50 exceed a margin of 0.02 and 0.1 + 0.2 differ from
0.3, so float noise could flip a gate; no metric is meaningful beyond 12 digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

DIGITS = 12  # significant digits a gate compares; below them a difference is float noise


def exact(value: float) -> Decimal:
    """`value` as the decimal it stands for (12 significant digits), so subtraction is exact."""
    return Decimal(f"{float(value):.{DIGITS}g}")


@dataclass(frozen=True)
class Failure:
    metric: str
    reason: str

    def __str__(self) -> str:
        return f"{self.metric}: {self.reason}"


def check(policy, challenger: dict[str, float], champion: dict[str, float] | None) -> list[Failure]:
    """Every way `challenger` fails `policy` (a `PromotionSpec`) against `champion` (None: no champion yet)."""
    failures = []
    for name in policy.required:
        if name not in challenger:
            failures.append(Failure(name, "missing on the challenger (required); run `vap eval` on it first"))
    for name, rule in policy.metrics.items():
        better = "higher" if rule.greater_is_better else "lower"
        value = challenger.get(name)
        if value is None:
            failures.append(Failure(name, "missing on the challenger; run `vap eval` on it first"))
            continue
        if rule.threshold is not None:
            ok = exact(value) >= exact(rule.threshold) if rule.greater_is_better else exact(value) <= exact(rule.threshold)
            if not ok:
                failures.append(Failure(name, f"challenger {value:.6g} misses the threshold {rule.threshold:.6g} ({better} is better)"))
        if champion is None:
            continue
        base = champion.get(name)
        if base is None:
            failures.append(Failure(name, f"missing on the champion; cannot compare (challenger {value:.6g})"))
            continue
        worse_by = (exact(base) - exact(value)) if rule.greater_is_better else (exact(value) - exact(base))
        if worse_by > exact(rule.margin):
            failures.append(Failure(name, f"challenger {value:.6g} vs champion {base:.6g}: worse by {worse_by:.6g}, "
                                          f"margin {rule.margin:.6g} ({better} is better)"))
    return failures
