"""Generation: first frame + caption + reference video + reference caption → video frames.

A diffusers-style pipeline over the VAP transformer. Inputs are encoded by the same encoders
that built the training shards (`vap.datasets.encode.ClipEncoder`) and laid out by the family's
`training_inputs`, so inference sees exactly the training format; the loop itself is
family-neutral.

Guidance (`guide`, the one formula): classifier-free guidance as the authors sample — the
unconditional branch gives the target its negative prompt *and* the reference its negative prompt,
and keeps the reference video (latents, first-frame latent, Wan's CLIP embedding).
`reference_guidance_scale` adds a second term that pushes along (with reference − without
reference), for users whose reference is being ignored:
    ε = ε_uncond + g·(ε_cond − ε_uncond) + r·(ε_cond − ε_no_reference)
CogVideoX ramps g over the steps (dynamic CFG, `dynamic_guidance_scale`). Defaults per family are
the authors' (`Family.generation`): CogVideoX g = 6 dynamic, Wan g = 5 at 480×832, their negative
prompt for both streams.
With `reference_attention="one_way"` the reference stream's keys and values are computed at the
first step and reused at every later step (`ReferenceCache`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vap.errors import DataError, ModelError
from vap.training.attention import ReferenceCache
from vap.training.families.base import resolve_backbone
from vap.training.model import VAPExpert, VAPTransformer

log = logging.getLogger(__name__)


@dataclass
class VAPPipelineOutput:
    frames: np.ndarray | None  # uint8 [F, H, W, 3]
    latents: torch.Tensor  # the denoised latents, in the transformer's layout


def dynamic_guidance_scale(guidance_scale: float, t, num_inference_steps: int) -> float:
    """CogVideoX's dynamic CFG at timestep value `t`, as diffusers' CogVideoX pipelines compute it."""
    ramp = ((num_inference_steps - float(t)) / num_inference_steps) ** 5.0
    return 1 + guidance_scale * (1 - math.cos(math.pi * ramp)) / 2


def guide(cond: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: float,
          no_reference: torch.Tensor | None = None, reference_guidance_scale: float = 0.0) -> torch.Tensor:
    """ε = ε_uncond + g·(ε_cond − ε_uncond) + r·(ε_cond − ε_no_reference).

    cond: captions and reference; uncond: negative prompts on both streams, reference kept (None:
    no classifier-free guidance); no_reference: the caption without the reference stream."""
    out = cond if uncond is None else uncond + guidance_scale * (cond - uncond)
    if reference_guidance_scale:
        out = out + reference_guidance_scale * (cond - no_reference)
    return out


def _frames(video) -> np.ndarray:
    """uint8 [F, H, W, 3] from an array or a list of PIL images / arrays."""
    if isinstance(video, np.ndarray):
        array = video
    else:
        array = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in video])
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise DataError(f"a video is uint8 [frames, height, width, 3]; got {array.dtype} {tuple(array.shape)}")
    return array


def _image(image) -> np.ndarray:
    array = np.array(image.convert("RGB")) if hasattr(image, "convert") else np.array(image)  # writable copy
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise DataError(f"the first frame is a uint8 [height, width, 3] image; got {array.dtype} {tuple(array.shape)}")
    return array


class VAPPipeline:
    """`VAPPipeline.from_expert(folder)` or `from_backbone(backbone, family)`, then call it."""

    def __init__(self, transformer: VAPTransformer, encoder, scheduler, device: str | torch.device = "cpu"):
        self.transformer = transformer.eval()
        self.encoder = encoder  # vap.datasets.encode.ClipEncoder of the family
        self.scheduler = scheduler
        self.family = transformer.family
        self.device = torch.device(device)

    @classmethod
    def from_backbone(cls, backbone: str, family: str, expert: str | Path | None = None, blocks="default",
                      reference_attention: str = "joint", rope_delta: float | None = None,
                      device: str | None = None, torch_dtype: torch.dtype | None = None) -> VAPPipeline:
        """torch_dtype of the transformer: default bfloat16 on a GPU, float32 on the CPU."""
        from vap.datasets.encode import ClipEncoder, load_component

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = torch_dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        if expert is not None:
            blocks = VAPExpert.load_config(expert)["block_ids"]
        transformer = VAPTransformer.from_backbone(backbone, family, blocks=blocks,
                                                   reference_attention=reference_attention, rope_delta=rope_delta,
                                                   torch_dtype=torch_dtype)
        if expert is not None:
            transformer.load_expert(expert)
        local = resolve_backbone(backbone)
        encoder = ClipEncoder.from_pretrained(family, local, device=device)
        scheduler = load_component(local, "scheduler", torch.float32)
        return cls(transformer.to(device), encoder, scheduler, device)

    @classmethod
    def from_expert(cls, expert: str | Path, backbone: str | None = None, reference_attention: str | None = None,
                    device: str | None = None) -> VAPPipeline:
        """Rebuild the model an expert folder (from `save_expert`) was trained in."""
        config = VAPExpert.load_config(expert)
        backbone = backbone or config.get("backbone")
        if not backbone:
            raise ModelError(f"{expert}: the expert does not record its backbone; pass the backbone explicitly")
        return cls.from_backbone(backbone, config["family"], expert,
                                 reference_attention=reference_attention or config.get("reference_attention", "joint"),
                                 rope_delta=config.get("rope_delta"), device=device)

    # --- encoding ------------------------------------------------------------------------
    def _text(self, captions: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.encoder.encode_text(captions)).float()

    def _latent_frames(self, num_frames: int) -> int:
        """Latent frames the VAE really makes of `num_frames` (a VAE config's compression ratio
        can disagree with its layers, e.g. the tiny test VAEs): encode a 32×32 clip of zeros."""
        enc = self.encoder
        with torch.no_grad():
            x = torch.zeros(1, 3, num_frames, 32, 32, device=enc.device, dtype=enc.vae.dtype)
            return enc.vae.encode(x).latent_dist.mode().shape[2]

    def _inputs(self, image, references, num_frames, prompts, reference_prompts):
        """The family's model inputs for a batch of len(prompts), via the training layout:
        `references` (a list of videos, or None) along time, `reference_prompts` one list of
        captions (one per reference) per row. Without a reference, its slots hold zeros (and are
        not passed to the model)."""
        from vap.datasets.encode import to_model_input

        enc = self.encoder
        first = to_model_input(np.repeat(image[None], num_frames, 0)).unsqueeze(0).to(enc.device, enc.vae.dtype)
        with torch.no_grad():
            image_latent = enc.image_latent(first)[0].float().cpu()  # [C, F' (1 or F), h, w]
            image_embed = enc.image_embed(image)
        c, _, h, w = image_latent.shape
        latent_shape = (c, self._latent_frames(num_frames), h, w)
        if references is not None:
            encoded = [enc.encode_clip(r) for r in references]
            ref = {k: torch.cat([torch.from_numpy(e[k]).float() for e in encoded], 1) for k in ("latent", "image_latent")}
            ref["image_embed"] = torch.from_numpy(encoded[0]["image_embed"]).float() if "image_embed" in encoded[0] \
                else None
        else:
            ref = {"latent": torch.zeros(latent_shape), "image_latent": image_latent,
                   "image_embed": None if image_embed is None else image_embed[0]}
        n = len(prompts)

        def rows(x):
            return x.float().cpu().unsqueeze(0).expand(n, *x.shape).contiguous()

        batch = {
            "target_latent": rows(torch.zeros(latent_shape)),
            "target_image_latent": rows(image_latent),
            "reference_latent": rows(ref["latent"]),
            "reference_image_latent": rows(ref["image_latent"]),
            "target_text": self._text(prompts),
            "reference_text": torch.cat([self._text([row[i] for row in reference_prompts])
                                         for i in range(len(reference_prompts[0]))], 1),
        }
        if image_embed is not None:
            batch["target_image_embed"] = rows(image_embed[0])
            batch["reference_image_embed"] = rows(ref["image_embed"])
        t = self.transformer
        return self.family.training_inputs(batch, t.config.backbone_config, self.device, t.dtype)

    # --- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        image,
        prompt: str,
        reference_video,
        reference_prompt: str,
        negative_prompt: str | None = None,
        reference_negative_prompt: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        reference_guidance_scale: float = 0.0,
        dynamic_cfg: bool | None = None,
        generator: torch.Generator | None = None,
        cache_reference: bool = True,
        progress: bool = False,
        output_type: str = "np",
    ) -> VAPPipelineOutput:
        """Generate a video starting at `image` that carries `reference_video`'s semantics.

        image: uint8 [H, W, 3] (or PIL); reference_video: uint8 [F, H, W, 3] (or PIL frames),
        resized/cropped to height × width (default: the reference's); num_frames must equal the
        reference's frame count. Several references (CogVideoX, as the authors): a list of videos
        with `reference_prompt` a list of their captions, each unconditional caption the
        reference negative prompt. reference_video=None runs the backbone alone (plain I2V).
        negative_prompt / reference_negative_prompt: the unconditional branch's captions for the target
        and the reference (None: the family's, the authors' negative prompt). guidance_scale: None =
        the family's (CogVideoX 6, Wan 5); ≤ 1 turns classifier-free guidance off. dynamic_cfg: ramp
        it over the steps as CogVideoX does (None: the family's). reference_guidance_scale > 0
        strengthens the reference (one more forward per step).
        cache_reference: reuse the reference keys/values across steps (one_way models only).
        output_type: "np" decodes frames; "latent" skips the VAE decode.
        """
        from vap.datasets.encode import resize_crop

        image = _image(image)
        if reference_video is None:  # the backbone's own image-to-video generation
            if not (height and width and num_frames):
                raise ModelError("without a reference video give height, width and num_frames")
            if reference_guidance_scale:
                raise ModelError("reference_guidance_scale needs a reference video")
            reference = None
        else:
            many = isinstance(reference_prompt, list | tuple)
            videos = [_frames(v) for v in reference_video] if many else [_frames(reference_video)]
            reference_prompt = list(reference_prompt) if many else [reference_prompt]
            if len(videos) != len(reference_prompt):
                raise ModelError(f"{len(videos)} reference videos but {len(reference_prompt)} reference captions; "
                                 "give one caption per reference")
            height, width = height or videos[0].shape[1], width or videos[0].shape[2]
            num_frames = num_frames or len(videos[0])
            for v in videos:
                if num_frames != len(v):
                    raise ModelError(f"num_frames={num_frames} but the reference video has {len(v)} frames; "
                                     "the reference and the target must have the same frame count")
            reference = [resize_crop(v, height, width) for v in videos]
        self.encoder.check_frames(num_frames)
        image = resize_crop(image[None], height, width)[0]

        defaults = self.family.generation
        negative_prompt = defaults.negative_prompt if negative_prompt is None else negative_prompt
        reference_negative_prompt = (defaults.reference_negative_prompt if reference_negative_prompt is None
                                     else reference_negative_prompt)
        guidance_scale = defaults.guidance_scale if guidance_scale is None else guidance_scale
        dynamic_cfg = defaults.dynamic_cfg if dynamic_cfg is None else dynamic_cfg
        cfg = guidance_scale > 1.0
        prompts = [negative_prompt, prompt] if cfg else [prompt]
        ref_captions = reference_prompt if reference is not None else [reference_prompt]
        negatives = [reference_negative_prompt] * len(ref_captions)
        ref_prompts = [negatives, ref_captions] if cfg else [ref_captions]
        inputs = self._inputs(image, reference, num_frames, prompts, ref_prompts)
        axis = self.family.channel_axis
        one_way = self.transformer.config.reference_attention == "one_way"
        cache = ReferenceCache() if cache_reference and one_way and reference is not None else None
        ref_kwargs = {} if reference is None else {
            "reference_hidden_states": inputs.reference, "reference_encoder_hidden_states": inputs.reference_text,
            "reference_cache": cache, **inputs.extra}
        target_kwargs = {k: v for k, v in inputs.extra.items() if not k.startswith("reference")}

        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        shape = inputs.x0[:1].shape
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)
        latents = latents * getattr(self.scheduler, "init_noise_sigma", 1.0)
        steps = self.scheduler.timesteps
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="denoising")
        n = len(prompts)
        for t in steps:
            x = latents.to(self.transformer.dtype)
            pred = self.transformer(
                hidden_states=torch.cat([x.expand(n, *x.shape[1:]), inputs.condition], axis),
                timestep=t.expand(n), encoder_hidden_states=inputs.text, **{**target_kwargs, **ref_kwargs},
            ).sample.float()
            no_ref = None
            if reference_guidance_scale:
                no_ref = self.transformer(
                    hidden_states=torch.cat([x, inputs.condition[-1:]], axis), timestep=t.expand(1),
                    encoder_hidden_states=inputs.text[-1:], **{k: v[-1:] for k, v in target_kwargs.items()},
                ).sample.float()
            g = dynamic_guidance_scale(guidance_scale, t, num_inference_steps) if dynamic_cfg else guidance_scale
            out = guide(pred[-1:], pred[:1] if cfg else None, g, no_ref, reference_guidance_scale)
            latents = self.scheduler.step(out, t, latents, return_dict=False)[0]

        if output_type == "latent":
            return VAPPipelineOutput(frames=None, latents=latents)
        video = self.family.decode(self.encoder.vae, latents)  # [1, C, F, H, W] in [-1, 1]
        frames = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return VAPPipelineOutput(frames=frames.permute(1, 2, 3, 0).cpu().numpy(), latents=latents)
