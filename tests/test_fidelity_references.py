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
    with pytest.raises(ModelError, match="2 references given, but a wan expert takes 1 reference video"):
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
    # each reference is embedded exactly as it would be as the only reference
    with torch.no_grad():
        for i in range(2):
            alone = model.family.embed(model.expert.embed, video[:, i * f:(i + 1) * f],
                                       text[:, i * length:(i + 1) * length], kw["timestep"], None, None)
            n = alone.video.shape[1]
            torch.testing.assert_close(stream.video[:, i * n:(i + 1) * n], alone.video)
            torch.testing.assert_close(stream.text[:, i * length:(i + 1) * length], alone.text)
    # and the whole model runs on it, the target's frames out
    with torch.no_grad():
        out = model(**kw).sample
    assert out.shape[1] == f and torch.isfinite(out).all()


def _spec(backbone, source, shards, family="cogvideox", m=2):
    from vap.spec import parse_spec

    data = {"source": str(source), "shards": str(shards), "frames": 5, "fps": 8.0, "val_fraction": 0.0,
            "unseen_conditions": 0, "references_per_pair": m, "pairs_per_part": 8}
    return parse_spec({"name": "t", "model": {"family": family, "backbone": str(backbone)}, "data": data,
                       "storage": {"uri": "/tmp/unused"}, "registry": {"tracking_uri": "sqlite:////tmp/unused.db"}})


def test_data_builds_pairs_with_two_references_that_train(tiny_backbones, tmp_path):
    from vap.datasets.build import build_snapshot
    from vap.datasets.loader import make_loader
    from vap.datasets.synth import synthesize
    from vap.training.families import get_family

    src = tmp_path / "src"
    synthesize(str(src), conditions_per_category=1, clips_per_condition=3, frames=9, fps=8.0, size=32, progress=False)
    s = build_snapshot(_spec(tiny_backbones["cogvideox"], src, tmp_path / "shards"), progress=False)
    assert s.counts["train"]["pairs"] == 12
    batch = next(iter(make_loader(s.uri, "train", batch_size=2, seed=0, local_cache=tmp_path / "cache")))
    b, c, f, h, w = batch["target_latent"].shape
    assert batch["reference_latent"].shape == (b, c, 2 * f, h, w)  # two references along time
    assert batch["reference_image_latent"].shape == (b, c, 2, h, w)  # each its first frame
    assert batch["reference_text"].shape[1] == 2 * batch["target_text"].shape[1]  # each its caption
    import json

    captions = json.loads(batch["reference_caption"][0])
    assert len(captions) == 2 and batch["target_caption"][0] not in captions
    model = VAPTransformer.from_backbone(str(tiny_backbones["cogvideox"]), "cogvideox", blocks=[0])
    loss = get_family("cogvideox").objective(str(tiny_backbones["cogvideox"]))(model, batch)
    assert torch.isfinite(loss)


def test_wan_build_with_two_references_is_refused_before_any_work(tiny_backbones, tmp_path):
    from vap.datasets.build import build_snapshot

    with pytest.raises(DataError, match="references_per_pair = 2, but a wan expert takes 1 reference"):
        build_snapshot(_spec(tiny_backbones["wan"], tmp_path / "nothing", tmp_path / "shards", "wan"), progress=False)
    assert not (tmp_path / "shards").exists()


def test_pipeline_takes_several_references_each_with_its_caption(tiny_backbones, monkeypatch):
    import numpy as np

    from vap.training.pipeline import VAPPipeline

    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8) for _ in range(2)]
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    pipe = VAPPipeline.from_backbone(str(tiny_backbones["cogvideox"]), "cogvideox", blocks="all", device="cpu")
    calls, forward = [], pipe.transformer.forward
    monkeypatch.setattr(pipe.transformer, "forward", lambda **kw: calls.append(kw) or forward(**kw))
    out = pipe(image, "a cat melts", videos, ["a dog melts", "a car melts"], reference_negative_prompt="bad",
               num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.latents).all()
    (kw,) = calls
    text = lambda s: torch.from_numpy(pipe.encoder.encode_text([s])).float()[0]  # noqa: E731
    torch.testing.assert_close(kw["reference_encoder_hidden_states"][1], torch.cat([text("a dog melts"),
                                                                                   text("a car melts")]))
    torch.testing.assert_close(kw["reference_encoder_hidden_states"][0], torch.cat([text("bad"), text("bad")]))
    assert kw["reference_hidden_states"].shape[1] == 2 * kw["hidden_states"].shape[1]  # along time
    wan = VAPPipeline.from_backbone(str(tiny_backbones["wan"]), "wan", blocks=[0], device="cpu")
    with pytest.raises(ModelError, match="2 references given, but a wan expert takes 1"):
        wan(image, "a cat melts", videos, ["a dog melts", "a car melts"], num_inference_steps=1,
            output_type="latent")
