"""Shard contents against their clips: what a built snapshot stores for a pair is the encoding of
the two clips its `pair_id` names, the target's in the target columns and the reference's in the
reference columns.

Oracle: the test reads the samples with MosaicML Streaming itself, finds each clip's mp4 and
caption in the source CSV, decodes the frames with PyAV (synthetic clips of 17 frames at the
spec's 8 fps and 32×32 size: "evenly" keeps frames 0, 2, …, 16) and encodes them with the
backbone's own diffusers / transformers components, loaded here with `from_pretrained` —
none of the project's decoding or encoding code.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vap.datasets.build import build_snapshot
from vap.datasets.synth import synthesize
from vap.spec import parse_spec
from vap.training.tiny import TEXT_LEN, WAN_TEXT_LEN

SOURCE_FRAMES, FRAMES = 17, 9
# float16 columns: the spacing of float16 near 1 is 2^-10, so rounding moves a value by at
# most 2^-11 relative; values here stay below ~8, hence 8·2^-11 ≈ 4e-3 absolute
ATOL = 4e-3


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("oracle-src")
    synthesize(str(out), conditions_per_category=1, clips_per_condition=2, frames=SOURCE_FRAMES, fps=8.0, size=32,
               progress=False)
    return out


def build(backbone: Path, family: str, source: Path, shards: Path):
    spec = parse_spec({"name": "t", "model": {"family": family, "backbone": str(backbone)},
                       "data": {"source": str(source), "shards": str(shards), "frames": FRAMES, "fps": 8.0,
                                "val_fraction": 0.0, "unseen_conditions": 0, "pairs_per_part": 4},
                       "storage": {"uri": "/tmp/unused"}, "registry": {"tracking_uri": "sqlite:////tmp/unused.db"}})
    return build_snapshot(spec, progress=False)


def stored(snapshot_uri: str) -> list[dict]:
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=str(Path(snapshot_uri) / "train"), remote=None, shuffle=False, batch_size=1)
    return [ds[i] for i in range(len(ds))]


def clips_by_id(source: Path) -> dict[str, tuple[Path, str]]:
    """clip id (its manifest path without the extension) → (mp4, caption), from the CSV."""
    with open(source / "metadata.csv") as f:
        return {r["video_paths"].rsplit(".", 1)[0]: (source / r["video_paths"], r["tar_video_caption"])
                for r in csv.DictReader(f)}


def frames_of(mp4: Path) -> np.ndarray:
    with av.open(str(mp4)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert len(frames) == SOURCE_FRAMES
    return frames[np.linspace(0, SOURCE_FRAMES - 1, FRAMES).round().astype(int)]


class Oracle:
    """The family's encoders from the backbone folder, used as diffusers' I2V pipelines use them."""

    def __init__(self, family: str, folder: Path):
        from transformers import AutoTokenizer

        self.family, folder = family, str(folder)
        if family == "cogvideox":
            from diffusers import AutoencoderKLCogVideoX as VAE
            from transformers import T5EncoderModel as Text
        else:
            from diffusers import AutoencoderKLWan as VAE
            from transformers import CLIPImageProcessor, CLIPVisionModel
            from transformers import UMT5EncoderModel as Text

            self.clip = CLIPVisionModel.from_pretrained(folder, subfolder="image_encoder").eval()
            self.processor = CLIPImageProcessor.from_pretrained(folder, subfolder="image_processor")
        self.vae = VAE.from_pretrained(folder, subfolder="vae").eval()
        self.text_encoder = Text.from_pretrained(folder, subfolder="text_encoder").eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")

    def _latent(self, video: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(video).latent_dist.mode()
        if self.family == "cogvideox":
            return z * self.vae.config.scaling_factor
        mean = torch.tensor(self.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.vae.config.latents_std).view(1, -1, 1, 1, 1)
        return (z - mean) / std

    @torch.no_grad()
    def columns(self, frames: np.ndarray, caption: str) -> dict[str, np.ndarray]:
        x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # [1, C, F, H, W]
        if self.family == "cogvideox":
            first = x[:, :, :1]
            length = TEXT_LEN
        else:
            first = torch.cat([x[:, :, :1], torch.zeros_like(x[:, :, 1:])], 2)
            length = WAN_TEXT_LEN
        tok = self.tokenizer([caption], padding="max_length", max_length=length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        if self.family == "cogvideox":
            text = self.text_encoder(tok.input_ids)[0]
        else:  # Wan: the caption's own tokens, zeros after them
            text = self.text_encoder(tok.input_ids, tok.attention_mask).last_hidden_state
            text = text * tok.attention_mask[..., None]
        out = {"latent": self._latent(x), "image_latent": self._latent(first), "text": text}
        if self.family == "wan":
            pixels = self.processor(images=frames[0], return_tensors="pt").pixel_values
            out["image_embed"] = self.clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        return {k: v[0].numpy() for k, v in out.items()}


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_each_pair_holds_its_own_clips(tiny_backbones, source, family, tmp_path):
    snapshot = build(tiny_backbones[family], family, source, tmp_path / "shards")
    samples = stored(snapshot.uri)
    clips, oracle = clips_by_id(source), Oracle(family, tiny_backbones[family])
    assert len(samples) == len(clips)  # 4 conditions × 2 clips: each clip the target of one pair
    for sample in samples[:2]:  # a sample: encoding is the slow part
        target_id, reference_id = sample["pair_id"].split("<-")
        assert target_id != reference_id
        # the default build stores the reference candidates stacked, the pair's own reference first
        assert sample["reference_candidates"] == 1  # a condition of 2 clips: the other clip only
        first = {"target": lambda v: v, "reference": lambda v: v[0]}
        captions = {"target": sample["target_caption"], "reference": json.loads(sample["reference_caption"])[0]}
        for role, clip_id in (("target", target_id), ("reference", reference_id)):
            mp4, caption = clips[clip_id]
            assert captions[role] == caption
            want = oracle.columns(frames_of(mp4), caption)
            for name, value in want.items():
                got = first[role](sample[f"{role}_{name}"])
                assert got.dtype == np.float16 and got.shape == value.shape, (role, name, got.shape)
                np.testing.assert_allclose(got.astype(np.float32), value, atol=ATOL, rtol=0,
                                           err_msg=f"{sample['pair_id']}: {role}_{name}")
