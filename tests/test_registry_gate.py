"""The promotion gate and ledger against a real MLflow server (sqlite store, S3 artifacts)."""

import json
import subprocess
import sys

import pytest

from vap import gate
from vap.errors import RegistryError
from vap.registry import Registry, ledger_line
from vap.spec import MetricGate, PromotionSpec

LOSS = PromotionSpec(metrics={"eval_loss": MetricGate(greater_is_better=False, margin=0.01)})
TOP1 = PromotionSpec(metrics={"eval.val.alignment_top1": MetricGate(greater_is_better=True, threshold=0.5)})


# --- the pure decision (oracle: the numbers written out by hand) ---------------------------
def test_gate_margin_threshold_and_direction():
    assert gate.check(LOSS, {"eval_loss": 0.50}, {"eval_loss": 0.50}) == []       # equal passes
    assert gate.check(LOSS, {"eval_loss": 0.509}, {"eval_loss": 0.50}) == []      # worse, within the margin
    [fail] = gate.check(LOSS, {"eval_loss": 0.52}, {"eval_loss": 0.50})           # worse by 0.02 > 0.01
    assert str(fail) == ("eval_loss: challenger 0.52 vs champion 0.5: worse by 0.02, margin 0.01 "
                         "(lower is better)")
    assert gate.check(TOP1, {"eval.val.alignment_top1": 0.9}, {"eval.val.alignment_top1": 0.8}) == []
    assert gate.check(TOP1, {"eval.val.alignment_top1": 0.8}, {"eval.val.alignment_top1": 0.8}) == []  # margin 0: equal passes
    [low, worse] = gate.check(TOP1, {"eval.val.alignment_top1": 0.4}, {"eval.val.alignment_top1": 0.8})
    assert "misses the threshold 0.5 (higher is better)" in str(low) and "worse by 0.4, margin 0" in str(worse)
    assert gate.check(TOP1, {"eval.val.alignment_top1": 0.6}, None) == []         # first champion: the bar only


def test_float_noise_cannot_flip_a_gate():
    # Oracle: the decimals as written. In binary floats 0.52 - 0.50 = 0.020000000000000018 > 0.02
    # and 0.1 + 0.2 = 0.30000000000000004 > 0.3; as decimals both sit exactly on the bar.
    at_margin = PromotionSpec(metrics={"eval_loss": MetricGate(greater_is_better=False, margin=0.02)})
    assert 0.52 - 0.50 > 0.02 and gate.check(at_margin, {"eval_loss": 0.52}, {"eval_loss": 0.50}) == []
    top = PromotionSpec(metrics={"top1": MetricGate(greater_is_better=True, threshold=0.3)})
    equal = PromotionSpec(metrics={"eval_loss": MetricGate(greater_is_better=False)})
    assert gate.check(equal, {"eval_loss": 0.1 + 0.2}, {"eval_loss": 0.3}) == []
    assert gate.check(top, {"top1": 0.1 + 0.2}, None) == []
    assert gate.check(top, {"top1": 0.1 + 0.2 - 1e-9}, None) != []  # a real difference still counts
    [worse] = gate.check(at_margin, {"eval_loss": 0.5200001}, {"eval_loss": 0.50})
    assert "worse by 0.0200001, margin 0.02" in str(worse)


def test_gate_missing_metrics_are_named():
    policy = PromotionSpec(metrics=LOSS.metrics, required=["eval.val.loss"])
    fails = [str(f) for f in gate.check(policy, {}, {"eval_loss": 0.5})]
    assert fails == ["eval.val.loss: missing on the challenger (required); run `vap eval` on it first",
                     "eval_loss: missing on the challenger; run `vap eval` on it first"]
    [f] = gate.check(LOSS, {"eval_loss": 0.4}, {})
    assert str(f) == "eval_loss: missing on the champion; cannot compare (challenger 0.4)"


def test_policy_is_validated_in_the_spec():
    with pytest.raises(ValueError, match="at least one metric"):
        PromotionSpec(metrics={})
    with pytest.raises(ValueError, match="greater_is_better"):
        PromotionSpec(metrics={"eval_loss": {"margin": 0.1}})
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        MetricGate(greater_is_better=False, margin=-1)


# --- against the server ----------------------------------------------------------------------
@pytest.fixture()
def registry(mlflow_server, request, tmp_path):
    return Registry(mlflow_server, f"gate-{request.node.name[5:35].replace('_', '-')}", lock_uri=str(tmp_path / "locks"))


def _version(registry, eval_loss=None, **eval_metrics):
    run = registry.start_run("job-g", {}, {})
    tags = {} if eval_loss is None else {"metric.eval_loss": eval_loss}
    version = registry.register(run, f"s3://bucket/{run}/expert", tags)
    if eval_metrics:
        registry.record_evaluation(version, {k.replace("_", ".", 2): v for k, v in eval_metrics.items()})
    return version


def test_worse_refused_equal_promoted_forced_recorded_rollback_exact(registry):
    v1 = _version(registry, 0.50)
    assert registry.promote(policy=LOSS).decision == "promoted"
    v2 = _version(registry, 0.60)
    refused = registry.promote(policy=LOSS)
    assert (refused.decision, registry.version_of("champion")) == ("refused", v1)
    assert refused.failures == ("eval_loss: challenger 0.6 vs champion 0.5: worse by 0.1, margin 0.01 (lower is better)",)
    v3 = _version(registry, 0.50)
    assert registry.promote(policy=LOSS).previous == v1 and registry.version_of("champion") == v3
    with pytest.raises(RegistryError, match="--force needs --reason"):
        registry.promote(version=v2, policy=LOSS, force=True)
    forced = registry.promote(version=v2, policy=LOSS, force=True, reason="hotfix for a customer")
    assert (forced.decision, registry.version_of("champion")) == ("forced", v2)
    # rollback pops the stack of promotions: v2 -> v3 -> v1, then nothing earlier
    assert registry.rollback().version == v3 and registry.version_of("champion") == v3
    assert registry.rollback().version == v1 and registry.version_of("champion") == v1
    with pytest.raises(RegistryError, match="no earlier holder"):
        registry.rollback()
    history = registry.history()
    assert [(e["seq"], e["decision"], e["version"], e["previous"]) for e in history] == [
        (1, "promoted", v1, None), (2, "refused", v2, v1), (3, "promoted", v3, v1), (4, "forced", v2, v3),
        (5, "rolled_back", v3, v2), (6, "rolled_back", v1, v3)]
    assert history[3]["reason"] == "hotfix for a customer" and history[3]["metrics"] == {
        "version": {"eval_loss": 0.6}, "previous": {"eval_loss": 0.5}}
    assert history[1]["policy"]["metrics"]["eval_loss"]["margin"] == 0.01 and history[1]["who"]
    tags = registry.get_version(v2).tags
    assert tags["vap.ledger.000004"].startswith(f"forced champion previous={v3} by=") and "hotfix" in tags["vap.ledger.000004"]
    assert registry.audit() == []
    registry.client.set_registered_model_alias(registry.model_name, "champion", v2)  # outside the gate
    assert registry.audit() == [f"{registry.model_name}@champion is version {v2} but the ledger's last decision "
                                f"left version {v1}: it was moved outside `vap promote`"]


def test_missing_gate_metric_refused_and_evaluation_recorded(registry, tmp_path):
    v1 = _version(registry, 0.5)
    [fail] = registry.promote(policy=TOP1).failures
    assert fail == "eval.val.alignment_top1: missing on the challenger; run `vap eval` on it first"
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"\x89PNG fake")
    registry.record_evaluation(v1, {"eval.val.alignment_top1": 0.75, "eval.val.loss": 0.3}, [grid])
    assert registry.version_metrics(v1) == {"eval_loss": 0.5, "eval.val.alignment_top1": 0.75, "eval.val.loss": 0.3}
    run = registry.get_version(v1).run_id
    assert registry.client.get_run(run).data.metrics["eval.val.alignment_top1"] == 0.75
    assert [f.path for f in registry.client.list_artifacts(run, f"evaluation/v{v1}")] == [f"evaluation/v{v1}/grid.png"]
    assert registry.promote(policy=TOP1).decision == "promoted"
    with pytest.raises(RegistryError, match="does not start with 'eval.'"):
        registry.record_evaluation(v1, {"top1": 1.0})


PROMOTE = """
import sys, time
from vap.registry import Registry, ledger_line
r = Registry(sys.argv[1], sys.argv[2], lock_uri=sys.argv[3])
read = r.version_metrics
r.version_metrics = lambda v: (time.sleep(2), read(v))[1]  # widen the read-decide-write window
while time.time() < float(sys.argv[5]):
    time.sleep(0.01)
print(r.promote(version=sys.argv[4]).decision)
"""


def test_two_processes_promoting_at_once_leave_alias_and_ledger_consistent(registry, mlflow_server):
    import time

    versions = [_version(registry, 0.5), _version(registry, 0.5)]
    start = time.time() + 8  # both processes import mlflow first, then go at the same instant
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTE, mlflow_server, registry.model_name, registry.lock_uri,
                               v, str(start)], stdout=subprocess.PIPE, text=True) for v in versions]
    assert [p.communicate(timeout=120)[0].split()[-1] for p in procs] == ["promoted", "promoted"]
    history = registry.history()
    assert [e["seq"] for e in history] == [1, 2]
    first, second = history
    assert first["previous"] is None and second["previous"] == first["version"]  # each saw the other's move
    assert registry.version_of("champion") == second["version"] and registry.audit() == []
    json.dumps(history)


def test_promoting_the_champion_again_is_a_recorded_no_op(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path}/mlflow.db", "noop")
    v1, v2 = _version(registry, 0.5), _version(registry, 0.5)
    registry.promote(version=v1, policy=LOSS)
    registry.promote(version=v2, policy=LOSS)
    again = registry.promote(version=v2, policy=LOSS)
    assert (again.decision, again.moved, registry.version_of("champion")) == ("unchanged", True, v2)
    assert again.summary() == f"noop@champion is already version {v2}: nothing moved"
    last = registry.history()[-1]
    assert (last["decision"], last["version"], last["previous"]) == ("unchanged", v2, v2)
    assert ledger_line(last).split(" — ")[0].endswith(f"unchanged champion: {v2} -> {v2} (no-op: already the holder)")
    # the no-op leaves no step behind: rollback goes to the holder before v2, not to v2 itself
    assert registry.rollback().version == v1 and registry.version_of("champion") == v1
    assert registry.audit() == []
