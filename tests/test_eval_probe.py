"""The probes behind docs/CLAIMS.md §2 and the in-process expert fit, on a tiny random CogVideoX."""

from __future__ import annotations

import pytest
import torch

from vap.evaluation import fit, probe


@pytest.fixture(scope="module")
def tiny():
    from diffusers import CogVideoXDDIMScheduler

    from vap.training.families import get_family
    from vap.training.families.cogvideox.objective import VPredictionObjective
    from vap.training.families.cogvideox.tiny import build
    from vap.training.model import VAPTransformer, plain_config

    torch.manual_seed(0)
    pipe = build()
    backbone = pipe.transformer
    model = VAPTransformer("cogvideox", plain_config(backbone.config), [0, 1], backbone=backbone).eval()
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    model.diffusers_pipeline = pipe  # its own RoPE tables: the oracle of the backbone-alone loss
    return model, VPredictionObjective(get_family("cogvideox"), scheduler)


def shard_batch(conditions: list[str], seed: int = 0) -> dict:
    """Shard-format rows (docs/CONTRACTS.md) of the tiny model: 4 latent channels, 3 frames of 8×8."""
    g = torch.Generator().manual_seed(seed)
    n = len(conditions)

    def rand(*shape):
        return torch.randn(n, *shape, generator=g).half()

    return {"condition": list(conditions), "category": ["motion"] * n, "pair_id": [f"p{i}" for i in range(n)],
            "target_latent": rand(4, 3, 8, 8), "target_image_latent": rand(4, 1, 8, 8), "target_text": rand(16, 32),
            "reference_latent": rand(4, 3, 8, 8), "reference_image_latent": rand(4, 1, 8, 8),
            "reference_text": rand(16, 32)}


def test_mismatched_reference_comes_from_another_condition():
    batch = shard_batch(["a", "a", "b", "b", "c"])
    out = probe.mismatched(batch)
    for i, ref in enumerate(out["reference_latent"]):
        source = [j for j, r in enumerate(batch["reference_latent"]) if torch.equal(r, ref)]
        assert len(source) == 1 and batch["condition"][source[0]] != batch["condition"][i]
    assert torch.equal(out["target_latent"], batch["target_latent"])  # the targets stay


def test_mismatched_needs_two_conditions():
    with pytest.raises(ValueError, match="two conditions"):
        probe.mismatched(shard_batch(["a", "a"]))


def test_attention_share_is_two_thirds_with_two_copies_of_the_target_as_reference(tiny):
    # A fresh expert is a clone of the backbone: fed the target's own input, text, timestep and
    # positions (Δ = 0) twice as two references, its keys are two more copies of the target's, so
    # exactly 2/3 of every query's softmax mass lands on the reference.
    from vap.training.model import VAPTransformer

    model, _ = tiny
    same = VAPTransformer("cogvideox", dict(model.config.backbone_config), [0, 1], rope_delta=0,
                          backbone=model.backbone).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 8, 8, 8, generator=g)
    text = torch.randn(1, 16, 32, generator=g)
    with probe.recording_attention() as shares, torch.no_grad():
        same(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=text,
             reference_hidden_states=torch.cat([x, x], 1), reference_encoder_hidden_states=torch.cat([text, text], 1))
    assert shares == pytest.approx([2 / 3, 2 / 3], abs=1e-5)


def test_losses_without_reference_are_the_backbones(tiny):
    model, objective = tiny
    batch = shard_batch(["a", "b", "a", "b"])
    losses = probe.reference_losses(model, objective, batch, batch_size=2)
    # the oracle: the bare diffusers transformer on the same inputs and the same noise draws
    from vap.training.families import get_family

    fam, total = get_family("cogvideox"), 0.0
    # diffusers' I2V pipeline's own RoPE for 3 latent frames of 8×8 (16 px: the tiny VAE halves space)
    rope = model.diffusers_pipeline._prepare_rotary_positional_embeddings(16, 16, 3, torch.device("cpu"))
    for start in (0, 2):
        rows = probe.take(batch, [start, start + 1])
        inputs = fam.training_inputs(rows, model.config.backbone_config, "cpu", torch.float32)
        g = torch.Generator().manual_seed(probe.LOSS_SEED + start)
        noisy, t, aux = objective.noise(inputs.x0, g)
        with torch.no_grad():
            pred = model.backbone(hidden_states=torch.cat([noisy, inputs.condition], 2), timestep=t,
                                  encoder_hidden_states=inputs.text, image_rotary_emb=rope, return_dict=False)[0]
        total += objective.loss(pred, inputs.x0, noisy, aux).item() * 2
    assert losses["none"] == pytest.approx(total / 4, rel=1e-5)
    assert set(losses) == {"true", "mismatched", "noise", "none"}
    assert losses["true"] != pytest.approx(losses["none"])  # a fresh expert does read the reference


def test_loss_rows_are_the_variants_losses_row_by_row(tiny):
    # the oracle: reference_losses in chunks of one row draws row i's noise from LOSS_SEED + i too
    model, objective = tiny
    batch = shard_batch(["a", "b", "a", "c"], seed=3)
    rows = probe.reference_loss_rows(model, objective, batch)
    means = probe.reference_losses(model, objective, batch, batch_size=1)
    assert set(rows) == set(means) and all(len(v) == 4 for v in rows.values())
    for name, values in rows.items():
        assert sum(values) / 4 == pytest.approx(means[name], rel=1e-6)
    assert rows["true"] != rows["mismatched"]  # each row met its own (other) reference


def test_gap_is_the_paired_difference_with_its_interval():
    rows = {"true": [0.10, 0.20, 0.30, 0.40], "mismatched": [0.11, 0.22, 0.33, 0.44]}
    gap = probe.reference_gap(rows, "mismatched")
    assert gap["n"] == 4 and gap["mean"] == pytest.approx(0.025)
    assert 0.01 <= gap["low"] < gap["mean"] < gap["high"] <= 0.04  # within the smallest and largest difference
    swapped = probe.reference_gap(rows, "true", than="mismatched")
    assert swapped["mean"] == pytest.approx(-0.025) and swapped["high"] < 0


def test_drift_is_zero_for_a_clone_and_two_for_three_times_the_weights(tiny):
    from vap.training.model import VAPTransformer

    model, _ = tiny
    fresh = VAPTransformer("cogvideox", dict(model.config.backbone_config), [0, 1], backbone=model.backbone)
    assert probe.expert_drift(fresh) == {"0": 0.0, "1": 0.0}
    with torch.no_grad():
        for p in fresh.expert.blocks["1"].parameters():
            p.mul_(3)
    assert probe.expert_drift(fresh) == pytest.approx({"0": 0.0, "1": 2.0})


def test_drawn_references_are_other_clips_of_the_same_condition():
    batch = shard_batch(["a", "a", "a", "b", "b"])
    out = fit.draw_references(batch, torch.tensor([0, 1, 3, 4, 2]), torch.Generator().manual_seed(0))
    for row, i in enumerate([0, 1, 3, 4, 2]):
        source = [j for j, t in enumerate(batch["target_latent"]) if torch.equal(t, out["reference_latent"][row])]
        assert source != [i] and batch["condition"][source[0]] == batch["condition"][i]
        assert torch.equal(out["reference_text"][row], batch["target_text"][source[0]])


def test_fit_trains_the_expert_only(tiny):
    from vap.training.model import VAPTransformer

    model, objective = tiny
    m = VAPTransformer("cogvideox", dict(model.config.backbone_config), [0, 1], backbone=model.backbone)
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    losses = fit.train_expert(m, objective, shard_batch(["a", "a", "b", "b"]), steps=3, batch_size=2, lr=1e-3)
    assert len(losses) == 3
    assert all(torch.equal(v, m.backbone.state_dict()[k]) for k, v in before.items())
    assert max(probe.expert_drift(m).values()) > 0
