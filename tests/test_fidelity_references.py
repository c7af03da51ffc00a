"""Several references as the authors lay them out (CogVideoX), or refused (Wan)."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_model_helpers import LATENT, forward_kwargs, shard_batch

from vap.errors import DataError, ModelError
from vap.training.model import VAPTransformer


def two_references(batch: dict, family: str) -> dict:
    """The shard batch with a second, different reference after the first (frames, caption, first frame)."""
    g = torch.Generator().manual_seed(7)
    second = {k: torch.randn(batch[k].shape, generator=g).half() for k in ("reference_latent", "reference_text")}
    out = dict(batch, reference_latent=torch.cat([batch["reference_latent"], second["reference_latent"]], 2),
               reference_text=torch.cat([batch["reference_text"], second["reference_text"]], 1))
    if family == "cogvideox":
        img = torch.randn(batch["reference_image_latent"].shape, generator=g).half()
        out["reference_image_latent"] = torch.cat([batch["reference_image_latent"], img], 2)
    return out


def test_wan_refuses_more_than_one_reference(tiny_backbones):
    model = VAPTransformer.from_backbone(str(tiny_backbones["wan"]), "wan", blocks=[0])
    kw = forward_kwargs(model, shard_batch("wan", ref_frames=2 * LATENT["frames"]))
    with pytest.raises(ModelError, match="2 references given, but a wan expert takes one reference"):
        model(**kw)


def test_cogvideox_references_each_need_their_caption(tiny_backbones):
    model = VAPTransformer.from_backbone(str(tiny_backbones["cogvideox"]), "cogvideox", blocks=[0])
    batch = two_references(shard_batch("cogvideox"), "cogvideox")
    kw = forward_kwargs(model, batch)
    with pytest.raises(ModelError, match=r"2 reference\(s\) need 2 caption\(s\) of 16 tokens each \(32\), got 16"):
        model(**dict(kw, reference_encoder_hidden_states=kw["reference_encoder_hidden_states"][:, :16]))
    with pytest.raises(DataError, match="2 references need 2 first-frame latents, got 1"):
        forward_kwargs(model, dict(batch, reference_image_latent=batch["reference_image_latent"][:, :, :1]))


@pytest.fixture(scope="module")
def learned_table_backbone(tiny_backbones, tmp_path_factory):
    """The tiny CogVideoX with a learned position table, like CogVideoX-5b-I2V (its latents' size)."""
    from diffusers import CogVideoXTransformer3DModel

    out = tmp_path_factory.mktemp("cog-learned") / "backbone"
    shutil.copytree(tiny_backbones["cogvideox"], out)
    config = dict(CogVideoXTransformer3DModel.load_config(out, subfolder="transformer"))
    config.update(use_learned_positional_embeddings=True, sample_height=LATENT["height"],
                  sample_width=LATENT["width"], sample_frames=(LATENT["frames"] - 1) * 4 + 1)
    torch.manual_seed(0)
    model = CogVideoXTransformer3DModel.from_config(config)
    with torch.no_grad():  # a learned table is not the sin-cos one it starts from
        model.patch_embed.pos_embedding.normal_()
    shutil.rmtree(out / "transformer")
    model.save_pretrained(out / "transformer", safe_serialization=True)
    return out


def test_two_references_are_laid_out_as_the_authors(learned_table_backbone):
    model = VAPTransformer.from_backbone(str(learned_table_backbone), "cogvideox", blocks="all")
    batch = two_references(shard_batch("cogvideox"), "cogvideox")
    kw = forward_kwargs(model, batch)
    f, length = LATENT["frames"], 16
    ref = kw["reference_hidden_states"]  # [B, 2F, 2C, h, w]
    c = ref.shape[2] // 2
    # each reference's first-frame latent sits at its own first frame, zeros elsewhere
    images = batch["reference_image_latent"].float().permute(0, 2, 1, 3, 4)  # [B, 2, C, h, w]
    torch.testing.assert_close(ref[:, 0, c:], images[:, 0])
    torch.testing.assert_close(ref[:, f, c:], images[:, 1])
    others = [i for i in range(2 * f) if i not in (0, f)]
    assert ref[:, others, c:].abs().max() == 0

    # each reference embedded with its own caption and the learned table of one clip
    pe = model.expert.embed.patch_embed
    table = pe.pos_embedding[0]  # [L + N, D]: caption positions, then one clip's video positions
    text, video = kw["reference_encoder_hidden_states"], ref
    with torch.no_grad():
        stream = model.family.embed(model.expert.embed, video, text, kw["timestep"], None, None)
        want_text, want_video = [], []
        for i in range(2):
            clip = video[:, i * f:(i + 1) * f]
            b, n_f, ch, h, w = clip.shape
            tokens = pe.proj(clip.reshape(-1, ch, h, w)).flatten(2).transpose(1, 2).reshape(b, -1, table.shape[1])
            want_video.append(tokens + table[length:])
            want_text.append(pe.text_proj(text[:, i * length:(i + 1) * length]) + table[:length])
    torch.testing.assert_close(stream.text, torch.cat(want_text, 1))
    torch.testing.assert_close(stream.video, torch.cat(want_video, 1))
    # and the whole model runs on it, the target's frames out
    with torch.no_grad():
        out = model(**kw).sample
    assert out.shape[1] == f and torch.isfinite(out).all()
