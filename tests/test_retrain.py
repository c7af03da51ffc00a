"""`vap retrain`: one cycle's decisions against a real MLflow registry (sqlite), with the build
and the trainer replaced by recorders (their own tests cover them; here: what the cycle decides)."""

from types import SimpleNamespace

import pytest

from vap.errors import RegistryError
from vap.registry import Registry
from vap.retrain import gate_trained, job_name, retrain
from vap.spec import parse_spec


@pytest.fixture()
def spec(tmp_path):
    return parse_spec({"name": "nightly", "model": {"family": "cogvideox", "backbone": str(tmp_path / "bb")},
                       "data": {"source": str(tmp_path / "raw"), "shards": str(tmp_path / "shards")},
                       "storage": {"uri": str(tmp_path / "runs")},
                       "registry": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "model_name": "expert"}})


class World:
    """The data source (its current snapshot id) and a trainer that, like the real one, trains a
    job once and finds it finished afterwards."""

    def __init__(self, registry):
        self.registry, self.data, self.built, self.trained = registry, "snap-a", set(), []
        self.eval_loss = {"snap-a": 0.5}

    def build(self, spec):
        reused = self.data in self.built
        self.built.add(self.data)
        return SimpleNamespace(id=self.data, reused=reused)

    def train(self, spec):
        run = self.registry.find_run(spec.name)
        if run is not None and run.info.status == "FINISHED":
            return SimpleNamespace(version=run.data.tags["vap.version"])
        self.trained.append((spec.name, spec.data.snapshot))
        run_id = self.registry.start_run(spec.name, {}, {})
        version = self.registry.register(run_id, f"/ckpt/{spec.name}/expert",
                                         {"metric.eval_loss": self.eval_loss[spec.data.snapshot]})
        self.registry.set_tags(run_id, **{"vap.version": version, "vap.snapshot": spec.data.snapshot})
        self.registry.finish_run(run_id)
        return SimpleNamespace(version=version)

    def cycle(self, spec, policy="promote"):
        return retrain(spec, policy, build=self.build, train=self.train, registry=self.registry)


@pytest.fixture()
def world(spec):
    return World(Registry(spec.registry.tracking_uri, "expert"))


def test_job_name_is_stable_valid_and_keyed_by_spec_model_and_data(spec):
    name = job_name("nightly", "expert", "abc")
    assert name == job_name("nightly", "expert", "abc")
    assert len({name, job_name("nightly", "expert", "abd"), job_name("nightly", "other", "abc"),
                job_name("nightly-2", "expert", "abc")}) == 4
    assert name.startswith("nightly-expert-")
    # registry names allow what job names do not; truncation must not merge two long names
    odd = job_name("nightly", "Expert_v2.1", "abc")
    assert odd.startswith("nightly-expert-v2-1-") and odd != job_name("nightly", "expert-v2-1", "abc")
    longs = {job_name("x" * 42, "expert", "abc"), job_name("x" * 41, "expert", "abc"), job_name("x" * 42, "m" * 60, "abc")}
    assert len(longs) == 3
    for long in longs:
        assert len(long) <= 42 and parse_spec({**spec.model_dump(mode="json"), "name": long}).name == long


def test_two_models_on_one_snapshot_never_share_a_job(spec, world):
    """Two specs of the same name training different models on the same data: each trains its
    own job and registers its own version (a shared job would hand the second the first's run)."""
    other_spec = spec.model_copy(update={"registry": spec.registry.model_copy(update={"model_name": "expert-b"})})
    other = World(Registry(spec.registry.tracking_uri, "expert-b"))
    other.built = world.built  # the same data source: its snapshot is reused
    a, b = world.cycle(spec), other.cycle(other_spec)
    assert a.snapshot == b.snapshot == "snap-a" and a.job != b.job
    assert (a.trained, b.trained) == (True, True) and other.trained == [(b.job, "snap-a")]
    assert b.job == job_name("nightly", "expert-b", "snap-a")
    assert other.registry.version_of("champion") == b.version and world.registry.version_of("champion") == a.version


def test_cycles_promote_then_noop_then_gate_refuses_worse_data(spec, world):
    first = world.cycle(spec)
    assert (first.decision, first.data_changed, first.trained) == ("promoted", True, True)
    assert world.registry.version_of("champion") == first.version
    assert world.trained == [(job_name("nightly", "expert", "snap-a"), "snap-a")]  # trained on the snapshot it built

    again = world.cycle(spec)  # same data: same job, nothing trained, nothing moved
    assert (again.decision, again.data_changed, again.trained, again.job) == ("unchanged", False, False, first.job)
    assert len(world.trained) == 1

    world.data, world.eval_loss["snap-b"] = "snap-b", 0.9  # new data, a worse model
    worse = world.cycle(spec)
    assert (worse.decision, worse.data_changed, worse.trained) == ("refused", True, True)
    assert worse.job != first.job
    assert (worse.metrics["eval_loss"], worse.champion_metrics["eval_loss"]) == (0.9, 0.5)
    assert world.registry.version_of("champion") == first.version
    assert "eval_loss" in worse.summary() and "0.9" in worse.summary() and "0.5" in worse.summary()
    assert [e["decision"] for e in world.registry.history()] == ["promoted", "refused"]  # the ledger has both

    world.data, world.eval_loss["snap-c"] = "snap-c", 0.4  # newer data, a better model
    better = world.cycle(spec)
    assert better.decision == "promoted" and world.registry.version_of("champion") == better.version


def test_register_only_policy_never_moves_champion(spec, world):
    cycle = world.cycle(spec, policy="register")
    assert cycle.decision == "registered" and world.registry.version_of("champion") is None
    assert world.registry.version_of("challenger") == cycle.version


def test_unknown_policy_is_refused_before_any_work(spec, world):
    with pytest.raises(RegistryError, match="policy 'sometimes' is unknown"):
        world.cycle(spec, policy="sometimes")
    assert world.built == set()


def test_gate_only_decides_for_a_job_trained_elsewhere(spec, world):
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"snapshot": "snap-a"})})
    world.train(spec)  # the operator's RayJob trained job `nightly`
    assert gate_trained(spec, registry=world.registry).decision == "promoted"
    world.data, world.eval_loss["snap-b"] = "snap-b", 9.0
    worse = spec.model_copy(update={"name": "nightly-2", "data": spec.data.model_copy(update={"snapshot": "snap-b"})})
    world.train(worse)
    assert gate_trained(worse, registry=world.registry).decision == "refused"
    with pytest.raises(RegistryError, match="job never-ran has no finished run"):
        gate_trained(spec.model_copy(update={"name": "never-ran"}), registry=world.registry)


class Evaluator:
    """`vap eval` as the gate sees it: records eval.<split>.* on the version it is given."""

    def __init__(self, registry):
        self.registry, self.calls = registry, []

    def __call__(self, spec, model, split, pairs, *, record, progress):
        self.calls.append((model, spec.data.snapshot, split, pairs))
        version = model.rsplit("/", 1)[1]
        assert record and self.registry.get_version(version)  # a registered version, recorded on
        self.registry.record_evaluation(version, {f"eval.{split}.loss": 0.25})


def requiring(spec, metric):
    promotion = spec.registry.promotion.model_copy(update={"required": [metric]})
    return spec.model_copy(update={"registry": spec.registry.model_copy(update={"promotion": promotion})})


def test_gate_only_evaluates_the_version_before_the_gate_reads_it(spec, world):
    spec = requiring(spec.model_copy(update={"data": spec.data.model_copy(update={"snapshot": "latest"})}), "eval.val.loss")
    world.train(spec.model_copy(update={"data": spec.data.model_copy(update={"snapshot": "snap-a"})}))
    evaluate = Evaluator(world.registry)
    without = gate_trained(spec, registry=world.registry)
    assert without.decision == "refused" and "eval.val.loss" in without.summary()  # the gate needs the eval metric
    cycle = gate_trained(spec, registry=world.registry, eval_pairs=4, evaluate=evaluate)
    assert cycle.decision == "promoted" and cycle.metrics["eval.val.loss"] == 0.25
    # the version the job registered, on the snapshot it trained on (not the spec's "latest")
    assert evaluate.calls == [(f"models:/expert/{cycle.version}", "snap-a", "val", 4)]
    assert any(line.startswith("eval: models:/expert/") for line in cycle.reasons)


def test_a_repeated_cycle_does_not_evaluate_again(spec, world):
    spec = requiring(spec, "eval.unseen.loss")
    evaluate = Evaluator(world.registry)
    first = retrain(spec, build=world.build, train=world.train, registry=world.registry, eval_pairs=2,
                    eval_split="unseen", evaluate=evaluate)
    assert first.decision == "promoted" and evaluate.calls == [(f"models:/expert/{first.version}", "snap-a", "unseen", 2)]
    again = retrain(spec, build=world.build, train=world.train, registry=world.registry, eval_pairs=2,
                    eval_split="unseen", evaluate=evaluate)
    assert again.decision == "unchanged" and len(evaluate.calls) == 1
    assert "carries eval.unseen.* already" in again.summary()


@pytest.mark.parametrize("kwargs,needle", [({"eval_pairs": 0}, "evaluate at least 1 pair"),
                                           ({"eval_pairs": 2, "eval_split": "train"}, "eval split 'train' is unknown")])
def test_bad_evaluation_is_refused_before_any_work(spec, world, kwargs, needle):
    with pytest.raises(RegistryError, match=needle):
        retrain(spec, build=world.build, train=world.train, registry=world.registry, **kwargs)
    assert world.built == set()


def test_eval_splits_are_the_evaluators():
    from vap.evaluation.evaluate import SPLITS
    from vap.retrain import EVAL_SPLITS

    assert EVAL_SPLITS == SPLITS


def test_gate_only_cli_exits_3_when_refused_as_the_operator_reads_it(spec, world, tmp_path):
    """`vap retrain --gate-only` as the gate Job runs it: 0 and the decision, or exit 3 when refused
    (the Job's podFailurePolicy turns 3 into "refused", anything else into "broken")."""
    import json

    import yaml
    from typer.testing import CliRunner

    import typer

    from vap.retraincli import retrain as retrain_command

    app = typer.Typer()  # `vap` with the one command (vap.cli registers it the same way)
    app.callback()(lambda: None)
    app.command("retrain")(retrain_command)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(requiring(spec, "eval.val.loss").model_dump(mode="json")))
    world.train(spec.model_copy(update={"data": spec.data.model_copy(update={"snapshot": "snap-a"})}))
    refused = CliRunner().invoke(app, ["retrain", "--config", str(config), "--gate-only", "--json"])
    assert refused.exit_code == 3, refused.output
    assert json.loads(refused.stdout)["decision"] == "refused"
    config.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    passed = CliRunner().invoke(app, ["retrain", "--config", str(config), "--gate-only", "--policy", "register"])
    assert passed.exit_code == 0 and passed.stdout.startswith("registered: job nightly"), passed.output
    bad = CliRunner().invoke(app, ["retrain", "--config", str(config), "--gate-only", "--eval-pairs", "0"])
    assert bad.exit_code == 2 and "--eval-pairs" in bad.output


@pytest.mark.slow
def test_the_real_cycle_builds_trains_and_gates_once_per_snapshot(ray_cluster, tiny_backbones, tmp_path):
    """`retrain` with its real build (`vap data build`) and trainer (Ray Train × DeepSpeed) on a
    tiny backbone, as `make retrain-demo` runs it: what the recorders above stand in for fits."""
    from vap.datasets.synth import synthesize

    spec = parse_spec({
        "name": "cycle",
        "model": {"family": "cogvideox", "backbone": str(tiny_backbones["cogvideox"]), "expert": {"blocks": "all"}},
        "data": {"source": str(tmp_path / "raw"), "shards": str(tmp_path / "shards"), "frames": 9, "fps": 8,
                 "height": 32, "width": 32},
        "trainer": {"workers": 1, "steps": 2, "checkpoint_every": 2, "lr": 1e-3, "caption_dropout": 0.0},
        "storage": {"uri": str(tmp_path / "runs")},
        "registry": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "model_name": "cycle-expert"},
    })
    synthesize(spec.data.source, conditions_per_category=2, clips_per_condition=3, frames=17, fps=8, size=32)
    first = retrain(spec)
    assert (first.decision, first.data_changed, first.trained) == ("promoted", True, True)
    assert first.job == job_name("cycle", "cycle-expert", first.snapshot)
    again = retrain(spec)  # nothing new: the same snapshot and job, not trained again
    assert (again.decision, again.data_changed, again.trained) == ("unchanged", False, False)
    assert (again.snapshot, again.job, again.version) == (first.snapshot, first.job, first.version)
    registry = Registry(spec.registry.tracking_uri, "cycle-expert")
    assert registry.version_of("champion") == first.version
    assert [e["decision"] for e in registry.history()] == ["promoted"]

    import shutil

    synthesize(str(tmp_path / "day2"), conditions_per_category=2, clips_per_condition=3, frames=17, fps=8, size=32, seed=1)
    shutil.rmtree(tmp_path / "raw")
    shutil.copytree(tmp_path / "day2", tmp_path / "raw")  # new data arrives at the same source
    new = retrain(spec)
    assert (new.data_changed, new.trained) == (True, True) and new.snapshot != first.snapshot and new.job != first.job
    assert new.decision in ("promoted", "refused") and new.version != first.version  # the gate decided
    assert [e["decision"] for e in registry.history()] == ["promoted", new.decision]
