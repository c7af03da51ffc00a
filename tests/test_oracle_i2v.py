"""Generation's I2V inputs against diffusers' own image-to-video pipelines.

Oracle: `CogVideoXImageToVideoPipeline` / `WanImageToVideoPipeline` run on the same tiny backbone
folder, with a forward pre-hook on their transformer recording what reaches it at every step
(noisy latents + I2V condition channels, timestep, caption embeddings, Wan's CLIP image tokens).
The project's pipeline, with an expert that has no blocks (so the reference cannot reach the
target), must hand its transformer the same tensors and end at the same latents. With an expert,
the hook on the expert's own time embedding shows the reference stream's timestep at each step.

Two documented deviations: caption embeddings are rounded to float16 (the shards' dtype; the
oracle rounds diffusers' to match), and the project encodes the first frame with the VAE posterior's mean (the
same clip always gives the same latent, see `ClipEncoder._vae_mean`); CogVideoX's pipeline
samples it, so the oracle runs with diffusers' own `retrieve_latents(..., sample_mode="argmax")`
(what Wan's pipeline already does).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vap.training.pipeline import VAPPipeline
from vap.training.tiny import TEXT_LEN

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
REFERENCE = RNG.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
PROMPT, NEGATIVE, REF_PROMPT = "a cat turns into a statue", "blurry", "a dog turns into a statue"
STEPS, G = 2, 5.0
# float32 on the CPU, the same kernels on both sides: differences are reordering only (≈1e-7);
# 1e-5 leaves room for the one extra multiply by the guidance scale, nothing more
ATOL = 1e-5


def diffusers_run(family: str, folder, monkeypatch) -> tuple[list[dict], torch.Tensor]:
    """diffusers' pipeline on `folder`: the kwargs of every transformer call and the final latents."""
    if family == "cogvideox":
        from diffusers import CogVideoXImageToVideoPipeline as Pipe
        from diffusers.pipelines.cogvideo import pipeline_cogvideox_image2video as module

        retrieve = module.retrieve_latents
        monkeypatch.setattr(module, "retrieve_latents", lambda out, generator=None, sample_mode="sample":
                            retrieve(out, generator, sample_mode="argmax"))
        extra = dict(use_dynamic_cfg=True, max_sequence_length=TEXT_LEN)
    else:
        from diffusers import WanImageToVideoPipeline as Pipe
        from diffusers.pipelines.wan import pipeline_wan_i2v as module

        # ftfy is not installed; it leaves these plain ASCII captions as they are
        monkeypatch.setattr(module, "ftfy", SimpleNamespace(fix_text=lambda text: text), raising=False)
        extra = {}
    pipe = Pipe.from_pretrained(str(folder), torch_dtype=torch.float32)
    # the pipeline takes the VAE's time compression from its config; the tiny CogVideoX VAE's
    # config states the real one's 4 while its two blocks compress by 2: use what the layers do
    with torch.no_grad():
        frames = pipe.vae.encode(torch.zeros(1, 3, 9, 32, 32)).latent_dist.mode().shape[2]
    pipe.vae_scale_factor_temporal = (9 - 1) // (frames - 1)
    # caption embeddings are float16 in the shards, and generation feeds them as training saw them
    encode_prompt = pipe.encode_prompt
    pipe.encode_prompt = lambda *a, **kw: tuple(None if e is None else e.half().float()
                                                for e in encode_prompt(*a, **kw))
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda m, args, kw: calls.append(dict(kw)), with_kwargs=True)
    out = pipe(image=Image.fromarray(IMAGE), prompt=PROMPT, negative_prompt=NEGATIVE, height=32, width=32,
               num_frames=9, num_inference_steps=STEPS, guidance_scale=G,
               generator=torch.Generator().manual_seed(0), output_type="latent", **extra)
    return calls, out.frames


def vap_run(family: str, folder, blocks) -> tuple[VAPPipeline, list[dict], torch.Tensor, list]:
    pipe = VAPPipeline.from_backbone(str(folder), family, blocks=blocks, device="cpu")
    calls, expert_t = [], []
    pipe.transformer.register_forward_pre_hook(lambda m, args, kw: calls.append(dict(kw)), with_kwargs=True)
    # the expert's own time embedding receives the reference stream's timestep
    first = pipe.transformer.expert.embed[pipe.family.embedder_names[1]]  # time_proj / condition_embedder
    first.register_forward_pre_hook(lambda m, args, kw: expert_t.append((args or (kw["timestep"],))[0].clone()),
                                    with_kwargs=True)
    latents = pipe(IMAGE, PROMPT, REFERENCE, REF_PROMPT, negative_prompt=NEGATIVE, height=32, width=32,
                   num_inference_steps=STEPS, guidance_scale=G, dynamic_cfg=family == "cogvideox",
                   generator=torch.Generator().manual_seed(0), output_type="latent").latents
    return pipe, calls, latents, expert_t


def close(a, b):
    torch.testing.assert_close(a.float(), b.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_inputs_and_result_are_diffusers_pipeline(tiny_backbones, family, monkeypatch):
    theirs, their_latents = diffusers_run(family, tiny_backbones[family], monkeypatch)
    _, ours, our_latents, _ = vap_run(family, tiny_backbones[family], blocks=[])
    assert len(ours) == STEPS
    if family == "cogvideox":  # one batched call per step: [negative, prompt]
        assert len(theirs) == STEPS
        for mine, d in zip(ours, theirs, strict=True):
            close(mine["hidden_states"], d["hidden_states"])  # noisy latents ⊕ first-frame latent, zero-padded
            close(mine["timestep"], d["timestep"])
            close(mine["encoder_hidden_states"], d["encoder_hidden_states"])
    else:  # Wan calls the transformer twice a step: prompt, then negative prompt
        assert len(theirs) == 2 * STEPS
        for mine, cond, uncond in zip(ours, theirs[0::2], theirs[1::2], strict=True):
            for row, d in ((1, cond), (0, uncond)):
                close(mine["hidden_states"][row], d["hidden_states"][0])  # latents ⊕ mask ⊕ condition video
                close(mine["timestep"][row], d["timestep"][0])
                close(mine["encoder_hidden_states"][row], d["encoder_hidden_states"][0])
                close(mine["encoder_hidden_states_image"][row], d["encoder_hidden_states_image"][0])
    # the conditioning is not trivially zero, and the runs end at the same latents
    condition = ours[0]["hidden_states"].narrow(ours[0]["hidden_states"].dim() - 3 if family == "cogvideox" else 1,
                                                4, 4)
    assert condition.abs().sum() > 0
    close(our_latents, their_latents)


@pytest.mark.parametrize("family, expected", [("cogvideox", "target's"), ("wan", 1.0)])
def test_expert_timestep_per_step(tiny_backbones, family, expected, monkeypatch):
    """CogVideoX (joint): the expert runs at the target's timestep, which is diffusers' at every
    step; Wan: the reference stays clean at t = 1 while the target follows diffusers' schedule."""
    theirs, _ = diffusers_run(family, tiny_backbones[family], monkeypatch)
    their_t = [d["timestep"][0] for d in theirs[:: 1 if family == "cogvideox" else 2]]
    _, ours, _, expert_t = vap_run(family, tiny_backbones[family], blocks="all")
    assert len(expert_t) == STEPS and len(set(float(t) for t in their_t)) == STEPS
    for mine, t, ref_t in zip(ours, their_t, expert_t, strict=True):
        assert torch.equal(mine["timestep"], t.expand(2))
        want = t if expected == "target's" else torch.tensor(expected)
        assert torch.equal(ref_t.float(), want.float().expand_as(ref_t)), (ref_t, want)
