"""`platform/registry.py`'s decisions pinned down fast enough to run once per mutant (`make mutate`,
docs/TESTING.md): the gate's path through `promote` (who is compared with whom, what moves, what
is refused), the aliases and version tags each decision leaves, the ledger's entries, rollback's
stack, history, audit, the metrics a version carries and the one-line renderings.

MLflow is real: its sqlite store, in-process (no server to start per mutant); a migrated empty
database is made once per MLflow version and copied, because creating one runs every schema
migration (seconds each time). Oracles: decisions, ledgers and messages written out by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from vap.errors import RegistryError
from vap.registry import Promotion, Registry, check_alias, ledger_line
from vap.spec import MetricGate, PromotionSpec

LOSS = PromotionSpec(metrics={"eval_loss": MetricGate(greater_is_better=False, margin=0.01)})


def _empty_store() -> Path:
    """A migrated, empty MLflow sqlite database for this MLflow version (made once, then reused)."""
    import mlflow

    path = Path(tempfile.gettempdir()) / f"vap-test-mlflow-{mlflow.__version__}.db"
    if not path.exists():
        building = path.with_suffix(f".{os.getpid()}.tmp")
        building.unlink(missing_ok=True)
        mlflow.MlflowClient(f"sqlite:///{building}").search_experiments()  # runs the migrations
        os.replace(building, path)  # atomic: a concurrent session sees a whole database or none
    return path


@pytest.fixture()
def registry(tmp_path, request) -> Registry:
    shutil.copy(_empty_store(), tmp_path / "mlflow.db")
    return Registry(f"sqlite:///{tmp_path}/mlflow.db", f"m-{request.node.name[5:40].replace('_', '-')}")


def version(registry: Registry, eval_loss: float | None = None, **tags) -> str:
    run = registry.start_run("job", {}, {})
    tags = {**tags, **({} if eval_loss is None else {"metric.eval_loss": eval_loss})}
    return registry.register(run, f"s3://bucket/{run}/expert", tags)


def ledger(registry: Registry) -> list[tuple]:
    return [(e["seq"], e["decision"], e["alias"], e["version"], e["previous"], e["reason"]) for e in registry.history()]


def who() -> str:
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()}"


# --- pure renderings ------------------------------------------------------------------------------

def test_each_decision_summarised_in_one_line():
    assert Promotion("m", "champion", "3", "2").summary() == "m@champion -> version 3 (was version 2)"
    assert Promotion("m", "champion", "1", None).summary() == "m@champion -> version 1 (new alias)"
    assert Promotion("m", "champion", "3", "2", "refused", ("a: low", "b: worse")).summary() == (
        "m@champion stays at version 2: version 3 refused — a: low; b: worse")
    assert Promotion("m", "prod", "3", "2", "forced", ("a: low",), "hotfix").summary() == (
        "m@prod -> version 3 (was version 2) [forced: hotfix]")
    assert Promotion("m", "champion", "2", "3", "rolled_back", (), "bad").summary() == (
        "m@champion -> version 2 (was version 3) [rolled back: bad]")
    assert Promotion("m", "champion", "2", "2", "unchanged").summary() == "m@champion is already version 2: nothing moved"
    assert [Promotion("m", "a", "1", None, d).moved for d in ("promoted", "refused", "forced", "rolled_back", "unchanged")] == [
        True, False, True, True, True]


def test_each_ledger_entry_as_one_line():
    entry = {"seq": 4, "when": "2026-12-04T10:00:00Z", "who": "u@h", "alias": "champion", "version": "3",
             "previous": "2", "decision": "promoted", "reason": "gate passed", "failures": []}
    assert ledger_line(entry) == "#4 2026-12-04T10:00:00Z u@h promoted champion: 2 -> 3 — gate passed"
    assert ledger_line({**entry, "previous": None}) == "#4 2026-12-04T10:00:00Z u@h promoted champion: none -> 3 — gate passed"
    refused = {**entry, "decision": "refused", "reason": "gate failed", "failures": ["a: low", "b: worse"]}
    assert ledger_line(refused) == "#4 2026-12-04T10:00:00Z u@h refused champion: version 3 refused, stays 2 — a: low; b: worse"
    assert ledger_line({**refused, "previous": None}).endswith("refused champion: version 3 refused, stays none — a: low; b: worse")
    forced = {**entry, "decision": "forced", "reason": "hotfix", "failures": ["a: low"]}
    assert ledger_line(forced) == "#4 2026-12-04T10:00:00Z u@h forced champion: 2 -> 3 — hotfix (gate: a: low)"
    same = {**entry, "decision": "unchanged", "previous": "3", "reason": "already the holder"}
    assert ledger_line(same) == ("#4 2026-12-04T10:00:00Z u@h unchanged champion: 3 -> 3 (no-op: already the holder) "
                                 "— already the holder")
    bare = {k: v for k, v in entry.items() if k not in ("reason", "failures")}  # older entries lack both
    assert ledger_line(bare) == "#4 2026-12-04T10:00:00Z u@h promoted champion: 2 -> 3 — "


@pytest.mark.parametrize("alias", ["latest", "v3", "a/b"])
def test_an_alias_mlflow_refuses_is_refused_before_any_call(alias):
    with pytest.raises(RegistryError) as err:
        check_alias(alias)
    assert str(err.value).startswith(f"alias {alias!r} is not allowed (")
    assert str(err.value).endswith("use letters, digits, '_' and '-', not 'latest' or v<number> (e.g. --alias champion)")
    check_alias("champion")
    check_alias("prod-2")


def test_a_long_refused_alias_is_cut_at_60_characters_and_mlflows_first_sentence_kept():
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_alias_name

    alias = "a/" + "b" * 70
    with pytest.raises(MlflowException) as mlflow_err:
        _validate_model_alias_name(alias)
    with pytest.raises(RegistryError) as err:
        check_alias(alias)
    reason = mlflow_err.value.message.split(". ")[0]
    assert str(err.value).startswith(f"alias {alias[:60]!r} is not allowed ({reason}); ")


# --- against MLflow's store -------------------------------------------------------------------------

def test_metrics_of_a_version_are_its_metric_and_eval_tags(registry):
    v = version(registry, 0.5, **{"metric.step_time": "1.5", "metric.note": "n/a", "eval.val.top1": "0.75",
                                   "evaluation": "3", "data_snapshot": "s"})
    assert registry.version_metrics(v) == {"eval_loss": 0.5, "step_time": 1.5, "eval.val.top1": 0.75}


def test_the_gate_promotes_refuses_and_forces_and_each_decision_is_in_the_ledger(registry):
    assert registry.version_of("champion") is None
    with pytest.raises(RegistryError) as err:
        registry.promote()
    assert str(err.value) == f"{registry.model_name} has no @challenger version to promote; run `vap train` or pass --version"
    v1 = version(registry, 0.50)
    first = registry.promote(policy=LOSS)  # the challenger by default, against no champion
    assert first == Promotion(registry.model_name, "champion", v1, None, "promoted", (), "gate passed")
    assert registry.version_of("champion") == v1
    assert registry.get_version(v1).tags["vap.promoted_to.champion"] == f"previous=none by={who()}"

    v2 = version(registry, 0.52)
    refused = registry.promote(policy=LOSS)
    failure = "eval_loss: challenger 0.52 vs champion 0.5: worse by 0.02, margin 0.01 (lower is better)"
    assert refused == Promotion(registry.model_name, "champion", v2, v1, "refused", (failure,), "gate failed")
    assert registry.version_of("champion") == v1 and "vap.promoted_to.champion" not in registry.get_version(v2).tags

    with pytest.raises(RegistryError) as err:
        registry.promote(version=v2, force=True, reason="  ")
    assert str(err.value) == "--force needs --reason TEXT: the ledger records why the gate was bypassed"
    forced = registry.promote(version=v2, policy=LOSS, force=True, reason=" hotfix ")
    assert forced == Promotion(registry.model_name, "champion", v2, v1, "forced", (failure,), "hotfix")
    assert registry.version_of("champion") == v2
    assert registry.get_version(v2).tags["vap.promoted_to.champion"] == f"previous={v1} by={who()}"
    # a forced promotion that passes anyway is recorded as promoted
    v3 = version(registry, 0.52)
    assert registry.promote(version=v3, policy=LOSS, force=True, reason="sure").decision == "promoted"
    assert ledger(registry) == [(1, "promoted", "champion", v1, None, "gate passed"),
                                (2, "refused", "champion", v2, v1, "gate failed"),
                                (3, "forced", "champion", v2, v1, "hotfix"),
                                (4, "promoted", "champion", v3, v2, "sure")]


def test_a_ledger_entry_records_metrics_policy_and_who_and_tags_the_version(registry):
    v1, v2 = version(registry, 0.50), version(registry, 0.70)
    registry.promote(version=v1, policy=LOSS)
    registry.promote(version=v2, policy=LOSS)
    first, second = registry.history()
    assert second["metrics"] == {"version": {"eval_loss": 0.7}, "previous": {"eval_loss": 0.5}}
    assert first["metrics"] == {"version": {"eval_loss": 0.5}, "previous": {}}
    assert second["policy"] == LOSS.model_dump(mode="json") and second["model"] == registry.model_name
    assert second["failures"] == ["eval_loss: challenger 0.7 vs champion 0.5: worse by 0.2, margin 0.01 (lower is better)"]
    assert second["who"] == who() and len(second["when"]) == 20 and second["when"][10] == "T"
    assert second["when"].endswith("Z")
    run = registry._ledger_run(create=False)
    assert [f.path for f in registry.client.list_artifacts(run, "ledger")] == [
        "ledger/000001-promoted.json", "ledger/000002-refused.json"]
    assert registry.get_version(v2).tags["vap.ledger.000002"] == (
        f"refused champion previous={v1} by={who()} at={second['when']}: gate failed")
    assert registry.get_version(v1).tags["vap.ledger.000001"] == (
        f"promoted champion previous=none by={who()} at={first['when']}: gate passed")
    long = registry.promote(version=v2, policy=LOSS, force=True, reason="x" * 6000)
    assert long.reason == "x" * 6000 and registry.history()[-1]["reason"] == "x" * 6000  # whole in the ledger
    assert len(registry.get_version(v2).tags["vap.ledger.000003"]) == 5000  # MLflow's tag limit


def test_the_default_gate_is_the_registrys_policy_then_the_specs(registry):
    v1, v2 = version(registry, 0.50), version(registry, 0.505)
    registry.promote(version=v1)
    # the spec's default gate: eval_loss, lower is better, margin 0 — 0.505 is worse
    assert registry.promote(version=v2).decision == "refused"
    registry.policy = LOSS  # the job spec's registry.promotion: a margin of 0.01
    assert registry.promote(version=v2).decision == "promoted"
    assert registry.history()[1]["policy"] == PromotionSpec().model_dump(mode="json")


def test_promoting_the_holder_again_moves_nothing_and_is_recorded(registry):
    v1, v2 = version(registry, 0.5), version(registry, 0.9)
    registry.promote(version=v1, policy=LOSS)
    same = registry.promote(version=v1, policy=LOSS)
    assert same == Promotion(registry.model_name, "champion", v1, v1, "unchanged", (), "already the holder")
    assert registry.promote(version=v1, policy=LOSS, reason=" checked ").reason == "checked"
    entry = registry.history()[1]
    assert entry["metrics"] == {"version": {"eval_loss": 0.5}, "previous": {"eval_loss": 0.5}}
    assert entry["policy"] == LOSS.model_dump(mode="json")
    assert registry.version_of("champion") == v1 and registry.version_of("challenger") == v2


def test_an_unknown_version_or_alias_is_named(registry):
    version(registry, 0.5)
    with pytest.raises(RegistryError) as err:
        registry.promote(version="7")
    assert str(err.value) == (f"model {registry.model_name!r} has no version 7 at {registry.tracking_uri}; "
                              "list versions in the MLflow UI or with `mlflow models`")
    with pytest.raises(RegistryError, match=r"alias 'latest' is not allowed"):
        registry.promote(alias="latest")
    with pytest.raises(RegistryError, match=r"alias 'v2' is not allowed"):
        registry.rollback(alias="v2")
    assert registry.history() == []  # refused before anything was recorded


def test_rollback_pops_the_promotions_of_one_alias(registry):
    v1, v2, v3 = (version(registry, 0.5) for _ in range(3))
    registry.promote(version=v1, policy=LOSS)
    registry.promote(version=v2, policy=LOSS)
    registry.promote(version=v1, alias="staging", policy=LOSS)
    bad = version(registry, 0.9)
    registry.promote(version=bad, policy=LOSS)  # refused: not a step to go back over
    registry.promote(version=v3, policy=LOSS, force=True, reason="hotfix")
    back = registry.rollback(reason=" v3 is broken ")
    assert back == Promotion(registry.model_name, "champion", v2, v3, "rolled_back", (), "v3 is broken")
    assert registry.version_of("champion") == v2 and registry.version_of("staging") == v1
    assert registry.rollback() == Promotion(registry.model_name, "champion", v1, v2, "rolled_back", (), "rollback")
    assert registry.version_of("champion") == v1
    with pytest.raises(RegistryError) as err:
        registry.rollback()
    assert str(err.value) == (f"{registry.model_name}@champion (version {v1}) has no earlier holder in the ledger to "
                              f"roll back to; use `vap promote --version N --force --reason …`")
    entry = registry.history()[-1]
    assert entry["metrics"] == {"version": {"eval_loss": 0.5}, "previous": {"eval_loss": 0.5}} and entry["policy"] == {}
    assert [e[1:5] for e in ledger(registry)][-2:] == [("rolled_back", "champion", v2, v3), ("rolled_back", "champion", v1, v2)]
    with pytest.raises(RegistryError, match=r"@staging \(version .*\) has no earlier holder"):
        registry.rollback(alias="staging")


def test_rollback_after_the_alias_was_moved_outside_the_ledger_is_refused(registry):
    v1, v2, v3 = (version(registry, 0.5) for _ in range(3))
    registry.promote(version=v1, policy=LOSS)
    registry.promote(version=v2, policy=LOSS)
    registry.client.set_registered_model_alias(registry.model_name, "champion", v3)  # by hand
    with pytest.raises(RegistryError, match=rf"@champion \(version {v3}\) has no earlier holder"):
        registry.rollback()
    assert registry.version_of("champion") == v3


def test_rollback_then_promote_again_then_rollback(registry):
    v1, v2, v3 = (version(registry, 0.5) for _ in range(3))
    for v in (v1, v2):
        registry.promote(version=v, policy=LOSS)
    registry.rollback()  # v2 -> v1
    registry.promote(version=v3, policy=LOSS)  # v1 -> v3
    assert registry.rollback().version == v1  # back over v3's promotion, not v2's
    with pytest.raises(RegistryError, match="no earlier holder"):
        registry.rollback()  # v1's own promotion had no previous holder


def test_history_is_empty_without_a_ledger_and_keeps_the_progress_bar_setting(registry, monkeypatch):
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as BAR

    assert registry.history() == [] and registry._ledger_run(create=False) is None
    v1 = version(registry, 0.5)
    registry.promote(version=v1, policy=LOSS)
    monkeypatch.delenv(BAR.name, raising=False)
    assert len(registry.history()) == 1 and BAR.name not in os.environ
    monkeypatch.setenv(BAR.name, "true")
    assert len(registry.history()) == 1 and os.environ[BAR.name] == "true"
    run = registry._ledger_run(create=False)
    assert registry.client.get_run(run).data.tags["vap.ledger"] == registry.model_name
    assert registry.client.get_run(run).info.status == "FINISHED"


def test_history_reads_only_this_models_ledger(registry):
    other = Registry(registry.tracking_uri, "other-model")
    v1 = version(registry, 0.5)
    registry.promote(version=v1, policy=LOSS)
    assert other.history() == []
    w1 = version(other, 0.5)
    other.promote(version=w1, policy=LOSS)
    assert [e["model"] for e in registry.history()] == [registry.model_name]
    assert [e["model"] for e in other.history()] == ["other-model"]


def test_audit_names_every_alias_moved_outside_the_gate(registry):
    v1, v2 = version(registry, 0.5), version(registry, 0.9)
    registry.promote(version=v1, policy=LOSS)
    registry.promote(version=v2, policy=LOSS)  # refused: the alias stays where the ledger left it
    registry.promote(version=v1, alias="prod", policy=LOSS)
    assert registry.audit() == []
    client, name = registry.client, registry.model_name
    client.set_registered_model_alias(name, "champion", v2)
    client.set_registered_model_alias(name, "canary", v1)  # never through the gate
    client.delete_registered_model_alias(name, "prod")
    assert registry.audit() == [
        f"{name}@canary is version {v1} but the ledger's last decision left version unset: it was moved outside `vap promote`",
        f"{name}@champion is version {v2} but the ledger's last decision left version {v1}: it was moved outside `vap promote`",
        f"{name}@prod is version unset but the ledger's last decision left version {v1}: it was moved outside `vap promote`"]
    assert json.dumps(registry.history())  # the ledger stays plain JSON


def test_audit_of_a_model_never_registered_names_it_and_the_fix(registry):
    with pytest.raises(RegistryError) as err:
        registry.audit()
    assert str(err.value) == (f"model {registry.model_name!r} is not registered at {registry.tracking_uri}; check "
                              "registry.model_name, or register a version first (`vap register --run RUN`)")


def test_each_decision_is_logged_as_its_summary(registry, caplog):
    import logging

    from vap import registry as registry_mod

    v1, v2 = version(registry, 0.5), version(registry, 0.5)
    with caplog.at_level(logging.INFO, logger=registry_mod.log.name):
        caplog.clear()
        first = registry.promote(version=v1, policy=LOSS)
        assert caplog.messages == [first.summary()]
        caplog.clear()
        same = registry.promote(version=v1, policy=LOSS)
        assert caplog.messages == [same.summary()]
        registry.promote(version=v2, policy=LOSS)
        caplog.clear()
        back = registry.rollback()
        assert caplog.messages == [back.summary()]


def test_a_ledger_file_is_sorted_indented_json_stamped_in_utc(registry, monkeypatch, tmp_path):
    import datetime
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")  # 9 hours from UTC: a local-time stamp would show
    time.tzset()
    try:
        registry.promote(version=version(registry, 0.5), policy=LOSS)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    [entry] = registry.history()
    when = datetime.datetime.strptime(entry["when"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert abs(datetime.datetime.now(datetime.UTC) - when) < datetime.timedelta(hours=1)
    run = registry._ledger_run(create=False)
    local = Path(registry.client.download_artifacts(run, "ledger/000001-promoted.json", str(tmp_path)))
    assert local.read_text() == json.dumps(entry, indent=2, sort_keys=True)


def test_reading_the_ledger_leaves_no_temporary_folder(registry, tmp_path, monkeypatch):
    registry.promote(version=version(registry, 0.5), policy=LOSS)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where MLflow and the registry make theirs
    assert len(registry.history()) == 1
    assert list(scratch.iterdir()) == []


def test_a_ledger_in_its_own_experiment_gets_the_registrys_artifact_location(registry, tmp_path):
    v1 = version(registry, 0.5)
    where = tmp_path / "ledger-artifacts"
    ledger_side = Registry(registry.tracking_uri, registry.model_name, experiment="ledgers",
                           artifact_location=str(where))
    ledger_side.promote(version=v1, policy=LOSS)
    exp = ledger_side.client.get_experiment_by_name("ledgers")
    assert exp.artifact_location.removeprefix("file://") == str(where)
    assert (where / ledger_side._ledger_run(create=False) / "artifacts" / "ledger" / "000001-promoted.json").is_file()
    run = ledger_side.client.get_run(ledger_side._ledger_run(create=False))
    assert run.info.run_name == f"registry-ledger-{registry.model_name}"
