"""MFU on GPU: its FLOPs are `vap plan`'s count for one rank's optimizer step — every micro-batch
of it, every sample of each — over the peak `vap plan` assumes (stated beside the metric)."""

from __future__ import annotations

import yaml
from conftest import REPO

from vap.plan import Setup
from vap.spec import parse_spec


def _spec(backbone, **trainer):
    data = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    data["model"]["backbone"] = str(backbone)
    data["trainer"].update(trainer)
    return parse_spec(data)


def test_mfu_flops_count_every_micro_batch_and_sample_and_the_stated_peak(tiny_backbones):
    from vap.training.trainer import _assumed_flops

    one, peak = _assumed_flops(_spec(tiny_backbones["cogvideox"], batch_size=1))
    assert one > 0 and peak == Setup.peak_tflops * 1e12
    assert _assumed_flops(_spec(tiny_backbones["cogvideox"], batch_size=1, grad_accum_steps=3))[0] == 3 * one
    assert _assumed_flops(_spec(tiny_backbones["cogvideox"], batch_size=2))[0] == 2 * one
    # per rank: more workers share the job, not one rank's step
    assert _assumed_flops(_spec(tiny_backbones["cogvideox"], batch_size=1, workers=4))[0] == one


def test_a_model_vap_plan_cannot_count_gives_no_mfu(tmp_path):
    from vap.training.trainer import _assumed_flops

    assert _assumed_flops(_spec(tmp_path / "no-backbone")) is None
