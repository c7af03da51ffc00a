"""The promotion gate's decision (vap.gate.check) where tests/test_registry_gate.py's pure tests
left it open (`make mutate` on platform/gate.py): a bar for a lower-is-better metric, and a
policy of several metrics, every one judged whatever happened to the one before. Oracle: the
rule written out by hand per case; runs without a server."""

from __future__ import annotations

import pytest

from vap import gate
from vap.spec import MetricGate, PromotionSpec

LOWER = MetricGate(greater_is_better=False, threshold=0.5)


@pytest.mark.parametrize(("value", "passes"), [(0.4, True), (0.5, True), (0.6, False)])
def test_a_lower_is_better_bar_is_a_maximum_met_when_equal(value, passes):
    failures = gate.check(PromotionSpec(metrics={"eval_loss": LOWER}), {"eval_loss": value}, None)
    if passes:
        assert failures == []
    else:
        assert failures == [gate.Failure("eval_loss", "challenger 0.6 misses the threshold 0.5 (lower is better)")]
        assert str(failures[0]) == "eval_loss: challenger 0.6 misses the threshold 0.5 (lower is better)"


# Two metrics, the first one in some state that ends its checks early: the second is still judged.
SECOND = {"top1": MetricGate(greater_is_better=True, threshold=0.5)}


def test_a_missing_metric_does_not_end_the_checks_of_the_next():
    policy = PromotionSpec(metrics={"eval_loss": LOWER, **SECOND})
    assert [str(f) for f in gate.check(policy, {"top1": 0.2}, None)] == [
        "eval_loss: missing on the challenger; run `vap eval` on it first",
        "top1: challenger 0.2 misses the threshold 0.5 (higher is better)"]


def test_without_a_champion_every_metric_still_meets_its_bar():
    policy = PromotionSpec(metrics={"eval_loss": LOWER, **SECOND})
    assert [str(f) for f in gate.check(policy, {"eval_loss": 0.4, "top1": 0.2}, None)] == [
        "top1: challenger 0.2 misses the threshold 0.5 (higher is better)"]


def test_a_metric_the_champion_lacks_does_not_end_the_comparison_of_the_next():
    policy = PromotionSpec(metrics={"eval_loss": MetricGate(greater_is_better=False),
                                    "top1": MetricGate(greater_is_better=True, margin=0.1)})
    assert [str(f) for f in gate.check(policy, {"eval_loss": 0.4, "top1": 0.6}, {"top1": 0.8})] == [
        "eval_loss: missing on the champion; cannot compare (challenger 0.4)",
        "top1: challenger 0.6 vs champion 0.8: worse by 0.2, margin 0.1 (higher is better)"]
