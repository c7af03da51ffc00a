"""`vap model info`: parameter counts of the real backbones match the paper; counts from a config
equal the counts of the model actually built."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vap.errors import ModelError
from vap.training.cli import app
from vap.training.info import model_info, shipped
from vap.training.model import VAPTransformer


@pytest.mark.parametrize("name, blocks, paper", [
    ("cogvideox-5b-i2v", list(range(41)), 5.4e9),
    ("wan2.1-i2v-14b-480p", list(range(0, 40, 4)), 4.3e9),
])
def test_real_configs_match_the_paper(name, blocks, paper):
    info = model_info(name)
    assert info.blocks == blocks
    # the paper rounds to two significant figures (5.4e9, 4.3e9): within 2 % is that rounding
    assert abs(info.expert_params - paper) / paper < 0.02, info.summary()
    assert shipped()[name]["paper_expert_params"] == paper
    assert info.backbone_params > info.expert_params


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_counts_from_config_equal_the_built_model(tiny_backbones, family):
    info = model_info(str(tiny_backbones[family]), blocks="all")
    model = VAPTransformer.from_backbone(str(tiny_backbones[family]), family, blocks="all")
    assert info.backbone_params == sum(p.numel() for p in model.backbone.parameters())
    assert info.expert_params == sum(p.numel() for p in model.expert_parameters())
    with pytest.raises(ModelError, match="family 'cogvideox' was asked"):
        model_info(str(tiny_backbones["wan"]), family="cogvideox")


def test_cli_prints_both_real_backbones():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "cogvideox-5b-i2v" in result.output and "5.435B" in result.output
    assert "wan2.1-i2v-14b-480p" in result.output and "10 blocks" in result.output
