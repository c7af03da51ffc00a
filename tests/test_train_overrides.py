"""`vap train -c job.yaml trainer.steps=5`: dotted overrides validated by the job spec's schema."""

import pytest
import yaml
from conftest import REPO

from vap.errors import SpecError
from vap.spec import load_spec

DEMO = REPO / "examples" / "demo.yaml"


def test_overrides_set_nested_values_parsed_as_yaml():
    spec = load_spec(DEMO, ["trainer.steps=5", "trainer.checkpoint_every=5", "trainer.adam_betas=[0.8, 0.95]",
                            "trainer.activation_checkpointing=true", "model.expert.blocks=[0]"])
    assert (spec.trainer.steps, spec.trainer.checkpoint_every) == (5, 5)
    assert spec.trainer.adam_betas == (0.8, 0.95) and spec.trainer.activation_checkpointing is True
    assert spec.model.expert.blocks == [0]
    assert load_spec(DEMO).trainer.steps == yaml.safe_load(DEMO.read_text())["trainer"]["steps"]  # the file is untouched


@pytest.mark.parametrize("override, message", [
    ("trainer.stepz=5", "unknown key 'trainer.stepz'"),
    ("trainer.steps=0", "'trainer.steps': Input should be greater than or equal to 1"),
    ("trainer.max_failures=-2", "'trainer.max_failures'"),
    ("trainer.adam_betas=[0.9, 1.5]", "'trainer.adam_betas.1'"),
    ("trainer.steps", "write it as dotted.key=value"),
    ("name.x=1", "'name' is not a section"),
])
def test_bad_overrides_are_one_clear_error(override, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("(", r"\(").replace(".", r"\.")):
        load_spec(DEMO, [override])


def test_checkpoint_every_beyond_steps_by_override_is_refused():
    with pytest.raises(SpecError, match=r"trainer\.checkpoint_every \(10\) exceeds trainer\.steps \(5\)"):
        load_spec(DEMO, ["trainer.checkpoint_every=10", "trainer.steps=5"])
