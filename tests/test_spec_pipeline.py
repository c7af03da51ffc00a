"""What VAPPipeline hands the transformer, where `make mutate` on training/pipeline.py found no
test: several references laid along time (CogVideoX, as the authors), a VAE kept in bfloat16,
the device a pipeline is built for. Oracles: the same pipeline's inputs for each reference
alone, concatenated by hand; the float32 VAE's run."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from vap.errors import DataError
from vap.training.pipeline import VAPPipeline

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
REFERENCES = RNG.integers(0, 255, (2, 9, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pipe(tiny_backbones):
    return VAPPipeline.from_backbone(str(tiny_backbones["cogvideox"]), "cogvideox", blocks="all", device="cpu")


def first_forward(pipe, monkeypatch, references, captions) -> dict:
    """The keyword arguments of the transformer's first forward for these references."""
    calls, forward = [], pipe.transformer.forward

    def record(**kw):
        calls.append(kw)
        return forward(**kw)

    monkeypatch.setattr(pipe.transformer, "forward", record)
    pipe(IMAGE, "a cat turns into a statue", references, captions, num_inference_steps=1, output_type="latent",
         generator=torch.Generator().manual_seed(0))
    monkeypatch.undo()
    return calls[0]


def test_several_references_are_laid_along_time_with_their_captions_in_order(pipe, monkeypatch):
    captions = ["a dog turns into a statue", "a bird turns into a statue"]
    one = [first_forward(pipe, monkeypatch, list(REFERENCES[i:i + 1]), captions[i:i + 1]) for i in range(2)]
    both = first_forward(pipe, monkeypatch, list(REFERENCES), captions)
    video = [kw["reference_hidden_states"] for kw in one]
    grown = [d for d in range(video[0].ndim) if both["reference_hidden_states"].shape[d] != video[0].shape[d]]
    assert grown == [1]  # CogVideoX's [B, F, C, H, W]: only the frame axis grows
    torch.testing.assert_close(both["reference_hidden_states"], torch.cat(video, 1), rtol=0, atol=0)
    text = [kw["reference_encoder_hidden_states"] for kw in one]  # [B, tokens, dim]: the second after the first
    torch.testing.assert_close(both["reference_encoder_hidden_states"], torch.cat(text, 1), rtol=0, atol=0)


def test_a_bfloat16_vae_gets_its_own_dtype(tiny_backbones):
    kw = dict(num_inference_steps=1, output_type="latent", generator=None)
    pipe = VAPPipeline.from_backbone(str(tiny_backbones["cogvideox"]), "cogvideox", blocks="all", device="cpu")
    want = pipe(IMAGE, "a cat", REFERENCES[0], "a dog", **{**kw, "generator": torch.Generator().manual_seed(0)}).latents
    pipe.encoder.vae.to(torch.bfloat16)  # a float32 clip into its bfloat16 convolutions raises
    got = pipe(IMAGE, "a cat", REFERENCES[0], "a dog", **{**kw, "generator": torch.Generator().manual_seed(0)}).latents
    # bfloat16 keeps 8 significant bits (2^-8 relative per rounding); measured here: 0.012 at most
    # on latents up to 2.1, so 0.1 is ~8× that and far below the latents' scale
    torch.testing.assert_close(got, want, rtol=0, atol=0.1)


def test_frames_given_as_pil_images_or_arrays_are_the_video_itself(pipe):
    """A reference as a list of frames: RGBA PIL images (as a GIF or PNG decodes) are converted to
    RGB, arrays are taken as they are; both generate what the uint8 array does."""
    from PIL import Image

    def latents(reference, image=IMAGE):
        return pipe(image, "a cat", reference, "a dog", num_inference_steps=1, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).latents

    want = latents(REFERENCES[0])
    opaque = np.concatenate([REFERENCES[0], np.full((*REFERENCES[0].shape[:3], 1), 255, np.uint8)], -1)
    rgba = [Image.fromarray(frame, "RGBA") for frame in opaque]
    torch.testing.assert_close(latents(rgba), want, rtol=0, atol=0)
    torch.testing.assert_close(latents(list(REFERENCES[0])), want, rtol=0, atol=0)
    torch.testing.assert_close(latents(REFERENCES[0], Image.fromarray(np.concatenate(
        [IMAGE, np.full((32, 32, 1), 255, np.uint8)], -1), "RGBA")), want, rtol=0, atol=0)


VIDEO = "a video is uint8 [frames, height, width, 3]; got "
FIRST = "the first frame is a uint8 [height, width, 3] image; got "


@pytest.mark.parametrize(("image", "reference", "message"), [
    (IMAGE, REFERENCES[0].astype(np.float32), VIDEO + "float32 (9, 32, 32, 3)"),  # right shape, not uint8
    (IMAGE, REFERENCES[0][0], VIDEO + "uint8 (32, 32, 3)"),  # one image for a video
    (IMAGE, REFERENCES[0][..., :2], VIDEO + "uint8 (9, 32, 32, 2)"),
    (IMAGE.astype(np.float32), REFERENCES[0], FIRST + "float32 (32, 32, 3)"),
    (IMAGE[None], REFERENCES[0], FIRST + "uint8 (1, 32, 32, 3)"),  # a video for the first frame
    (IMAGE[..., :2], REFERENCES[0], FIRST + "uint8 (32, 32, 2)"),
], ids=["float-video", "image-as-video", "2-channel-video", "float-image", "video-as-image", "2-channel-image"])
def test_a_bad_image_or_video_is_refused_naming_what_it_got(pipe, image, reference, message):
    with pytest.raises(DataError, match="^" + re.escape(message) + "$"):
        pipe(image, "a cat", reference, "a dog", num_inference_steps=1, output_type="latent")


def test_a_pipeline_runs_on_the_device_it_is_given_and_the_cpu_by_default(pipe):
    assert pipe.device == torch.device("cpu")
    assert VAPPipeline(pipe.transformer, pipe.encoder, pipe.scheduler).device == torch.device("cpu")
