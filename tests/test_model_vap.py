"""The VAP transformer on tiny backbones of both families: frozen backbone, cloned trainable
expert, parity with the backbone where the paper says the expert changes nothing, objectives,
save/load of the expert alone, and the errors a user gets for inputs that do not fit."""

from __future__ import annotations

import pytest
import torch
from test_model_helpers import FAMILIES, forward_kwargs, shard_batch, slice_kwargs

from vap.errors import DataError, ModelError
from vap.spec import ExpertSpec, ModelSpec
from vap.training.families import get_family
from vap.training.model import VAPTransformer, load_vap


def build(tiny_backbones, family, blocks="all", **kw) -> VAPTransformer:
    return VAPTransformer.from_backbone(str(tiny_backbones[family]), family, blocks=blocks, **kw)


def backbone_forward(model: VAPTransformer, kw: dict) -> torch.Tensor:
    """The diffusers backbone called exactly as its own I2V pipeline calls it."""
    bb = model.backbone
    x = kw["hidden_states"]
    if model.config.family == "cogvideox":
        from diffusers.models.embeddings import get_3d_rotary_pos_embed
        from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import (
            get_resize_crop_region_for_grid,
        )

        p, cfg = bb.config.patch_size, bb.config
        grid = (x.shape[3] // p, x.shape[4] // p)
        crops = get_resize_crop_region_for_grid(grid, cfg.sample_width // p, cfg.sample_height // p)
        rope = get_3d_rotary_pos_embed(cfg.attention_head_dim, crops, grid, x.shape[1])
        return bb(hidden_states=x, encoder_hidden_states=kw["encoder_hidden_states"], timestep=kw["timestep"],
                  image_rotary_emb=rope).sample
    return bb(hidden_states=x, timestep=kw["timestep"], encoder_hidden_states=kw["encoder_hidden_states"],
              encoder_hidden_states_image=kw["encoder_hidden_states_image"]).sample


@pytest.mark.parametrize("family", FAMILIES)
def test_load_vap_freezes_backbone_and_clones_the_expert(tiny_backbones, family):
    spec = ModelSpec(family=family, backbone=str(tiny_backbones[family]), expert=ExpertSpec(blocks="all"))
    model = load_vap(spec)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    trainable = list(model.expert_parameters())
    assert trainable and all(p.requires_grad for p in trainable)
    assert {id(p) for p in trainable} == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())

    fam = get_family(family)
    backbone_block = fam.blocks(model.backbone)[0].state_dict()
    for name, value in model.expert.blocks["0"].state_dict().items():
        assert torch.equal(value, backbone_block[name]), name  # starts as the backbone's weights ...
        assert value.data_ptr() != backbone_block[name].data_ptr(), name  # ... in its own storage
    assert not any(name.startswith(("proj_out", "norm_out")) for name, _ in model.expert.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_default_blocks_follow_the_paper(family):
    fam = get_family(family)
    assert fam.default_blocks(42 if family == "cogvideox" else 40) == (
        list(range(41)) if family == "cogvideox" else list(range(0, 40, 4)))


@pytest.mark.parametrize("family", FAMILIES)
def test_without_expert_blocks_the_output_is_the_backbones(tiny_backbones, family):
    model = build(tiny_backbones, family, blocks=[])
    kw = forward_kwargs(model, shard_batch(family))
    with torch.no_grad():
        ours = model(**kw).sample
        theirs = backbone_forward(model, kw)
        no_reference = model(**{k: v for k, v in kw.items() if not k.startswith("reference")}).sample
    assert torch.equal(ours, theirs)
    assert torch.equal(no_reference, theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_blocks_without_a_reference_compute_the_backbone_block(tiny_backbones, family):
    """Our joint block re-implements the diffusers block: with no reference stream it must agree."""
    model = build(tiny_backbones, family)
    fam = model.family
    kw = forward_kwargs(model, shard_batch(family))
    x = kw["hidden_states"]
    rope = model._rope(fam.target_positions(model.config.backbone_config, x.shape), x)
    with torch.no_grad():
        stream = fam.embed(model.backbone, x, kw["encoder_hidden_states"], kw["timestep"],
                           kw.get("encoder_hidden_states_image"), rope)
        block = fam.blocks(model.backbone)[1]
        ours, ref, _ = fam.joint_block(block, model.expert.blocks["1"], stream, None, "joint")
        theirs = fam.block(block, stream)
    assert ref is None
    torch.testing.assert_close(ours.video, theirs.video, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.text, theirs.text, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_reference_changes_the_prediction_only_through_expert_blocks(tiny_backbones, family):
    model = build(tiny_backbones, family)
    kw = forward_kwargs(model, shard_batch(family))
    other = dict(kw, reference_hidden_states=torch.randn_like(kw["reference_hidden_states"]))
    with torch.no_grad():
        a, b = model(**kw).sample, model(**other).sample
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_steps_touch_only_the_expert(tiny_backbones, family):
    model = build(tiny_backbones, family)
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    expert_before = {k: v.clone() for k, v in model.expert.state_dict().items()}
    objective = get_family(family).objective(str(tiny_backbones[family]))
    optimizer = torch.optim.AdamW(model.expert_parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        batch = shard_batch(family, seed=step)
        null = torch.zeros(batch["target_text"].shape[1:])
        loss = objective(model, batch, generator=g, caption_dropout=0.5, null_text=null)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is None for p in model.backbone.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.expert_parameters())
        optimizer.step()
        optimizer.zero_grad()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, frozen[k]), f"frozen {k} changed"
    changed = [k for k, v in model.expert.state_dict().items() if not torch.equal(v, expert_before[k])]
    assert changed


@pytest.mark.parametrize("family", FAMILIES)
def test_objective_is_reproducible_with_a_generator(tiny_backbones, family):
    model = build(tiny_backbones, family, blocks=[0])
    objective = get_family(family).objective(str(tiny_backbones[family]))
    batch = shard_batch(family)
    with torch.no_grad():
        a = objective(model, batch, generator=torch.Generator().manual_seed(3))
        b = objective(model, batch, generator=torch.Generator().manual_seed(3))
        c = objective(model, batch, generator=torch.Generator().manual_seed(4))
    assert a == b and a != c


def test_caption_dropout_without_null_text_is_a_clear_error(tiny_backbones):
    model = build(tiny_backbones, "cogvideox", blocks=[0])
    objective = get_family("cogvideox").objective(str(tiny_backbones["cogvideox"]))
    with pytest.raises(DataError, match="null_text"):
        objective(model, shard_batch("cogvideox"), caption_dropout=0.02)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_invariance(tiny_backbones, family):
    model = build(tiny_backbones, family)
    kw = forward_kwargs(model, shard_batch(family, batch=3), timestep=(900, 500, 20))
    with torch.no_grad():
        together = model(**kw).sample
        alone = torch.cat([model(**slice_kwargs(kw, i)).sample for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_the_expert_alone(tiny_backbones, family, tmp_path):
    trained = build(tiny_backbones, family)
    with torch.no_grad():
        for p in trained.expert_parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = trained.save_expert(tmp_path / "expert")
    assert sorted(f.name for f in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    from safetensors.torch import load_file

    saved = load_file(folder / "diffusion_pytorch_model.safetensors")
    assert sum(v.numel() for v in saved.values()) == sum(p.numel() for p in trained.expert.parameters())

    fresh = build(tiny_backbones, family)
    kw = forward_kwargs(fresh, shard_batch(family))
    with torch.no_grad():
        before = fresh(**kw).sample
        fresh.load_expert(folder)
        after, expected = fresh(**kw).sample, trained(**kw).sample
    assert torch.equal(after, expected)
    assert not torch.equal(before, expected)


def test_an_expert_for_another_backbone_is_refused(tiny_backbones, tmp_path):
    wan = build(tiny_backbones, "wan").save_expert(tmp_path / "wan-expert")
    cog = build(tiny_backbones, "cogvideox")
    with pytest.raises(ModelError, match="wan backbone.*cogvideox"):
        cog.load_expert(wan)
    partial = build(tiny_backbones, "cogvideox", blocks=[1]).save_expert(tmp_path / "cog-1")
    with pytest.raises(ModelError, match=r"blocks \[1\].*\[0, 1\]"):
        cog.load_expert(partial)
    with pytest.raises(ModelError, match="not an expert folder"):
        cog.load_expert(tmp_path)


def test_an_expert_for_a_differently_sized_backbone_is_refused(tiny_backbones, tmp_path):
    cog = build(tiny_backbones, "cogvideox")
    config = dict(cog.config.backbone_config, num_layers=3)
    bigger = VAPTransformer("cogvideox", config, [0, 1])
    bigger.save_expert(tmp_path / "e")
    with pytest.raises(ModelError, match="num_layers: expert 3 vs backbone 2"):
        cog.load_expert(tmp_path / "e")


def test_a_backbone_of_the_wrong_family_is_refused(tiny_backbones):
    with pytest.raises(ModelError, match="WanTransformer3DModel.*'cogvideox'"):
        VAPTransformer.from_backbone(str(tiny_backbones["wan"]), "cogvideox")
    with pytest.raises(ModelError, match="out of range"):
        VAPTransformer.from_backbone(str(tiny_backbones["wan"]), "wan", blocks=[0, 7])
    with pytest.raises(ModelError, match="'no-such-org/no-such-model' is not a local folder"):
        VAPTransformer.from_backbone("no-such-org/no-such-model", "wan")  # offline in tests: unreachable


@pytest.mark.parametrize("family", FAMILIES)
def test_mismatched_reference_is_refused_naming_both_shapes(tiny_backbones, family):
    model = build(tiny_backbones, family, blocks=[0])
    kw = forward_kwargs(model, shard_batch(family))
    ref = kw["reference_hidden_states"]
    fa = model.family.frame_axis
    smaller = ref[..., :4, :4]
    with pytest.raises(ModelError, match=r"reference latents .*\b4, 4\).*target latents"):
        model(**dict(kw, reference_hidden_states=smaller))
    fewer = ref.narrow(fa, 0, 2)
    with pytest.raises(ModelError, match="reference has 2 latent frames but the target has 3"):
        model(**dict(kw, reference_hidden_states=fewer))
    batch = shard_batch(family)
    batch["reference_latent"] = batch["reference_latent"][..., :4]
    with pytest.raises(DataError, match="do not match target latents"):
        get_family(family).objective(str(tiny_backbones[family]))(model, batch)


def test_several_references_laid_along_time(tiny_backbones):
    model = build(tiny_backbones, "cogvideox")
    batch = shard_batch("cogvideox", ref_frames=6)  # two references: two captions, two first-frame latents
    batch["reference_text"] = batch["reference_text"].repeat(1, 2, 1)
    batch["reference_image_latent"] = batch["reference_image_latent"].repeat(1, 1, 2, 1, 1)
    with torch.no_grad():
        out = model(**forward_kwargs(model, batch)).sample
    assert out.shape[model.family.frame_axis] == 3 and torch.isfinite(out).all()



def test_wan_i2v_needs_its_caption_length(tiny_backbones):
    """diffusers splits Wan I2V's context into image and text at 512 tokens: anything else would
    silently mix them up, so it is refused."""
    model = build(tiny_backbones, "wan", blocks=[0])
    kw = forward_kwargs(model, shard_batch("wan"))
    with pytest.raises(ModelError, match="captions have 16 tokens .* needs 512"):
        model(**dict(kw, encoder_hidden_states=kw["encoder_hidden_states"][:, :16]))


@pytest.mark.parametrize("family", FAMILIES)
def test_activation_checkpointing_gives_the_same_gradients(tiny_backbones, family):
    """The paper trains with activation checkpointing; recomputation must not change anything."""
    grads = []
    for checkpointing in (False, True):
        model = build(tiny_backbones, family)
        if checkpointing:
            model.enable_gradient_checkpointing()
        objective = get_family(family).objective(str(tiny_backbones[family]))
        objective(model, shard_batch(family), generator=torch.Generator().manual_seed(0)).backward()
        grads.append({n: p.grad for n, p in model.expert.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    last = max(model.expert.config.block_ids)
    for name, a in grads[0].items():
        b = grads[1][name]
        assert (a is None) == (b is None), name
        if a is None:  # only the last expert block's reference output feeds nothing (no expert head)
            assert name.startswith(f"blocks.{last}."), name
        else:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_load_vap_from_an_object_store_uri(tiny_backbones, s3_bucket, tmp_path, monkeypatch):
    from vap import storage

    monkeypatch.setenv("VAP_CACHE", str(tmp_path / "cache"))
    uri = f"{s3_bucket}/backbones/tiny-cogvideox"
    storage.upload_dir(tiny_backbones["cogvideox"], uri)
    model = load_vap(ModelSpec(family="cogvideox", backbone=uri, expert=ExpertSpec(blocks=[1])))
    local = build(tiny_backbones, "cogvideox", blocks=[1])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), local.state_dict().values(), strict=True))
    assert model.expert.config.backbone == uri  # recorded: generation finds the backbone again
    objective = get_family("cogvideox").objective(uri)  # reads scheduler/ from the same URI
    assert objective.num_train_timesteps == 1000
