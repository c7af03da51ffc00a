"""A toy CogVideoX-I2V backbone that has learned the synthetic world (`vap model toy OUT`).

The tiny backbone (`tiny.py`) is random, so everything generated from it is noise. The toy one
is trained by this module on clips of `vap.datasets.synth` (every condition, shape, colour and
background): first the VAE (`AutoencoderKLCogVideoX`, 4× in time and space), then — on
precomputed latents — the image-to-video transformer (`CogVideoXTransformer3DModel`) with
CogVideoX's v-prediction objective (`VPredictionObjective`). The first-frame latent is
concatenated on channels and zero-padded in time, as `CogVideoXImageToVideoPipeline.prepare_latents`
builds it; it is drawn from the VAE posterior (`latent_dist.sample`, as the pipeline does), so a
mode latent (what `vap data build` stores) is one of the inputs it has seen.

The result is saved with `save_pretrained` in the hub layout (model_index.json, transformer/,
vae/, text_encoder/, tokenizer/, scheduler/) plus `recipe.json` (the recipe and its content key:
a hash of the recipe and of the code that trains the weights), `quality.json` (held-out numbers)
and `grid.png`. A copy is shipped in `toy-backbone/` next to this file (`shipped_path()`), so the
demo and tests never train it; a recipe or training-code change without a rebuild is caught by
the key (`tests/test_toy.py`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

RECIPE = {
    "seed": 0,
    "frames": 9,  # 4k+1: three latent frames
    "size": 32,
    "clips_per_condition": 24,  # training clips of each of the 24 conditions
    "heldout_clips_per_condition": 2,  # rendered from another seed: scenes training never saw
    # 16 latent channels and a loss on frame differences: with 8 channels and pixel MSE alone the
    # round trip kept a still blob and 29 % of motion's frame change (docs/CLAIMS.md §1).
    "vae": {"block_out_channels": [16, 32, 32], "latent_channels": 16, "norm_num_groups": 8,
            "steps": 1200, "batch": 4, "lr": 2e-3, "kl_weight": 1e-6, "temporal_weight": 1.0},
    "transformer": {"num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 16, "time_embed_dim": 64,
                    "steps": 2500, "batch": 32, "lr": 1e-3, "caption_dropout": 0.1},
}
HELDOUT_SEED_OFFSET = 1000
SHIPPED = Path(__file__).parent / "toy-backbone"


def shipped_path() -> Path:
    """The toy backbone kept in the repository (hub layout)."""
    return SHIPPED


# ---------------------------------------------------------------- what the weights depend on

def build_pipeline(recipe: dict):
    """The untrained CogVideoXImageToVideoPipeline of `recipe` (seed it before calling)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )

    from vap.training.tiny import TEXT_DIM, TEXT_LEN, tiny_text_encoder

    v, t = recipe["vae"], recipe["transformer"]
    levels = len(v["block_out_channels"])
    # Every down block but the last halves space and time, so 3 blocks compress 4× in both: the
    # config states the true temporal ratio, which the pipeline trusts for the latent frame count.
    vae = AutoencoderKLCogVideoX(
        block_out_channels=tuple(v["block_out_channels"]), latent_channels=v["latent_channels"], layers_per_block=1,
        norm_num_groups=v["norm_num_groups"], down_block_types=("CogVideoXDownBlock3D",) * levels,
        up_block_types=("CogVideoXUpBlock3D",) * levels, temporal_compression_ratio=2 ** (levels - 1),
        sample_height=recipe["size"], sample_width=recipe["size"],
    )
    spatial = 2 ** (levels - 1)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=t["num_attention_heads"], attention_head_dim=t["attention_head_dim"],
        in_channels=2 * v["latent_channels"], out_channels=v["latent_channels"], time_embed_dim=t["time_embed_dim"],
        text_embed_dim=TEXT_DIM, num_layers=t["num_layers"], sample_width=recipe["size"] // spatial,
        sample_height=recipe["size"] // spatial, sample_frames=recipe["frames"], patch_size=2,
        max_text_seq_length=TEXT_LEN, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
    )
    tokenizer, text_encoder = tiny_text_encoder("t5")
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing",
                                       rescale_betas_zero_snr=True)
    return CogVideoXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                         transformer=transformer, scheduler=scheduler)


def world_clips(seed: int, per_condition: int, frames: int, size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """(uint8 clips [N, F, S, S, 3], captions, conditions) of every synthetic condition."""
    from vap.datasets.synth import CONDITIONS, render_clip

    videos, captions, kinds = [], [], []
    for condition in CONDITIONS:
        for i in range(per_condition):
            video, caption = render_clip(condition, seed, i, frames=frames, size=size)
            videos.append(video)
            captions.append(caption)
            kinds.append(condition)
    return np.stack(videos), captions, kinds


def _pixels(clips: np.ndarray) -> torch.Tensor:
    """uint8 [N, F, H, W, 3] → float [N, 3, F, H, W] in [-1, 1] (the pipelines' range)."""
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def _cosine(step: int, steps: int, lr: float) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * step / steps))


def train_vae(vae, clips: np.ndarray, recipe: dict, progress=None) -> list[float]:
    """Reconstruction (MSE) + a small KL on random batches of whole clips; returns the losses."""
    v = recipe["vae"]
    gen = torch.Generator().manual_seed(recipe["seed"])
    opt = torch.optim.AdamW(vae.parameters(), lr=v["lr"], weight_decay=0.0)
    x_all, losses = _pixels(clips), []
    vae.train()
    for step in range(v["steps"]):
        for g in opt.param_groups:
            g["lr"] = _cosine(step, v["steps"], v["lr"])
        x = x_all[torch.randint(0, len(x_all), (v["batch"],), generator=gen)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(recon, x) + v["kl_weight"] * post.kl().mean()
        if v.get("temporal_weight"):  # the frame-to-frame change is a small part of the pixels: weigh it
            loss = loss + v["temporal_weight"] * torch.nn.functional.mse_loss(recon.diff(dim=2), x.diff(dim=2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if progress:
            progress("vae", step, v["steps"], loss.item())
    vae.eval()
    return losses


@torch.no_grad()
def posterior(vae, x: torch.Tensor, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior of pixel clips [N, 3, F, H, W], in batches."""
    means, stds = [], []
    for i in range(0, len(x), batch):
        d = vae.encode(x[i:i + batch]).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


def train_transformer(pipe, latents: torch.Tensor, first: tuple[torch.Tensor, torch.Tensor], text: torch.Tensor,
                      null_text: torch.Tensor, recipe: dict, progress=None) -> list[float]:
    """CogVideoX v-prediction on scaled latents [N, F', C, h, w]; the condition is the first-frame
    latent drawn from its posterior (scaled), zero-padded to F' frames and concatenated on channels."""
    from vap.training.families import get_family
    from vap.training.families.cogvideox.objective import VPredictionObjective

    t = recipe["transformer"]
    sf = pipe.vae.config.scaling_factor
    objective = VPredictionObjective(get_family("cogvideox"), pipe.scheduler)
    gen = torch.Generator().manual_seed(recipe["seed"] + 1)
    model = pipe.transformer.train()
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=0.0)
    frames, size = latents.shape[1], recipe["size"]
    rope = pipe._prepare_rotary_positional_embeddings(size, size, frames, torch.device("cpu"))
    first_mean, first_std = first
    losses = []
    for step in range(t["steps"]):
        for g in opt.param_groups:
            g["lr"] = _cosine(step, t["steps"], t["lr"])
        idx = torch.randint(0, len(latents), (t["batch"],), generator=gen)
        x0 = latents[idx]
        image = (first_mean[idx] + first_std[idx] * torch.randn(first_mean[idx].shape, generator=gen)) * sf
        condition = torch.cat([image, torch.zeros_like(x0[:, 1:])], dim=1)
        drop = torch.rand(len(idx), generator=gen) < t["caption_dropout"]  # so guidance has an unconditional
        caption = torch.where(drop[:, None, None], null_text.expand_as(text[idx]), text[idx])
        noisy, timestep, aux = objective.noise(x0, gen)
        pred = model(hidden_states=torch.cat([noisy, condition], dim=2), encoder_hidden_states=caption,
                     timestep=timestep, image_rotary_emb=rope, return_dict=False)[0]
        loss = objective.loss(pred, x0, noisy, aux)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        if progress:
            progress("transformer", step, t["steps"], loss.item())
    model.eval()
    return losses


def recipe_key(recipe: dict | None = None) -> str:
    """Content key of the weights: the recipe and the source of every function that trains them."""
    recipe = RECIPE if recipe is None else recipe
    code = "".join(inspect.getsource(f) for f in (build_pipeline, world_clips, _pixels, _cosine, train_vae,
                                                   posterior, train_transformer, train))
    return hashlib.sha256((json.dumps(recipe, sort_keys=True) + code).encode()).hexdigest()[:16]


def train(recipe: dict, progress=None) -> tuple[object, dict]:
    """Train the whole pipeline of `recipe`; returns (pipeline, timings and losses)."""
    from vap.training.families import get_family
    from vap.training.tiny import TEXT_LEN

    torch.manual_seed(recipe["seed"])
    pipe = build_pipeline(recipe)
    clips, captions, _ = world_clips(recipe["seed"], recipe["clips_per_condition"], recipe["frames"], recipe["size"])
    stats, t0 = {}, time.perf_counter()
    stats["vae_loss"] = train_vae(pipe.vae, clips, recipe, progress)[-20:]
    stats["vae_seconds"] = time.perf_counter() - t0

    x = _pixels(clips)
    mean, _ = posterior(pipe.vae, x)
    first = posterior(pipe.vae, x[:, :, :1])
    # Unit-variance latents, as CogVideoX's scaling_factor makes them; the pipeline reads it from the config.
    pipe.vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    latents = (mean * pipe.vae.config.scaling_factor).permute(0, 2, 1, 3, 4).contiguous()  # [N, F', C, h, w]
    first = tuple(v.permute(0, 2, 1, 3, 4).contiguous() for v in first)
    encoder = get_family("cogvideox").encoder(pipe.vae, pipe.text_encoder, pipe.tokenizer, text_len=TEXT_LEN,
                                              device="cpu")
    text = torch.from_numpy(encoder.encode_text(captions)).float()
    null_text = torch.from_numpy(encoder.encode_text([""])).float()
    t1 = time.perf_counter()
    stats["transformer_loss"] = train_transformer(pipe, latents, first, text, null_text, recipe, progress)[-50:]
    stats["transformer_seconds"] = time.perf_counter() - t1
    stats["first_frame_posterior_std"] = float(first[1].mean())
    return pipe, stats


# ---------------------------------------------------------------- quality, build, CLI

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8-range arrays."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def scene_caption(caption: str) -> str:
    """The caption without the phrase that names the condition ("a red circle on a blue background")."""
    return caption.split(" background")[0] + " background"


@torch.no_grad()
def quality(pipe, recipe: dict, steps: int = 25, examples: int = 6) -> tuple[dict, np.ndarray]:
    """Held-out numbers and a grid (first frame | generated | ground truth), from diffusers' own pipeline."""
    from PIL import Image

    seed = recipe["seed"] + HELDOUT_SEED_OFFSET
    clips, captions, kinds = world_clips(seed, recipe["heldout_clips_per_condition"], recipe["frames"], recipe["size"])
    x = _pixels(clips)
    mean, _ = posterior(pipe.vae, x)
    recon = np.stack([_to_uint8(pipe.vae.decode(mean[i:i + 1]).sample[0]) for i in range(len(mean))])
    frames, size = recipe["frames"], recipe["size"]

    def generate(p, i):
        out = p(image=Image.fromarray(clips[i, 0]), prompt=scene_caption(captions[i]), num_frames=frames,
                height=size, width=size, num_inference_steps=steps, guidance_scale=1.0, max_sequence_length=p.transformer.config.max_text_seq_length,
                output_type="np", generator=torch.Generator().manual_seed(i)).frames[0]
        return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)

    generated = np.stack([generate(pipe, i) for i in range(len(clips))])
    torch.manual_seed(recipe["seed"] + 7)
    random_pipe = build_pipeline(recipe)
    random_pipe.vae = pipe.vae  # the trained VAE: only the transformer is random
    random_gen = np.stack([generate(random_pipe, i) for i in range(len(clips))])
    repeat = np.repeat(clips[:, :1], frames, axis=1)

    def cont(v):  # frames after the first: what the model has to invent
        return v[:, 1:]

    def mse(a, b):
        return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))

    report = {
        "heldout_clips": len(clips), "heldout_seed": seed, "sampling_steps": steps, "guidance_scale": 1.0,
        "vae_reconstruction_psnr_db": psnr(recon, clips),
        "continuation": {name: {"psnr_db": psnr(cont(v), cont(clips)), "mse": mse(cont(v), cont(clips))}
                         for name, v in (("toy_backbone", generated), ("repeat_first_frame", repeat),
                                         ("random_transformer", random_gen), ("vae_reconstruction", recon))},
        "generated_first_frame_psnr_db": psnr(generated[:, 0], clips[:, 0]),
        "per_category_continuation_psnr_db": _per_category(generated, clips, kinds),
    }
    pick = np.linspace(0, len(clips) - 1, examples).round().astype(int)
    rows = [np.concatenate([np.concatenate(list(generated[i]), 1), np.concatenate(list(clips[i]), 1)], 0) for i in pick]
    grid = np.concatenate([np.pad(r, ((0, 4), (0, 0), (0, 0)), constant_values=255) for r in rows], 0)
    return report, grid


def _per_category(generated, clips, kinds):
    from vap.datasets.synth import SYNTH_CATEGORIES

    out = {}
    for cat in sorted(set(SYNTH_CATEGORIES.values())):
        m = np.array([SYNTH_CATEGORIES[k] == cat for k in kinds])
        out[cat] = psnr(generated[m][:, 1:], clips[m][:, 1:])
    return out


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] → uint8 [F, H, W, 3]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()


def build(out: str | Path, seed: int = 0, progress=None) -> Path:
    """Train the toy backbone (RECIPE with `seed`) and save it to `out`; kept if already built."""
    from PIL import Image

    out = Path(out)
    recipe = dict(RECIPE, seed=seed)
    key = recipe_key(recipe)
    if (out / "recipe.json").exists() and json.loads((out / "recipe.json").read_text()).get("key") == key:
        log.info("%s already holds toy backbone %s", out, key)
        return out
    t0 = time.perf_counter()
    pipe, stats = train(recipe, progress)
    pipe.save_pretrained(out, safe_serialization=True)
    t1 = time.perf_counter()
    report, grid = quality(pipe, recipe)
    report["build_seconds"] = {"vae": round(stats["vae_seconds"], 1), "transformer": round(stats["transformer_seconds"], 1),
                               "total_training": round(t1 - t0, 1), "quality": round(time.perf_counter() - t1, 1)}
    report["final_losses"] = {"vae": float(np.mean(stats["vae_loss"])), "transformer": float(np.mean(stats["transformer_loss"]))}
    report["first_frame_posterior_std"] = stats["first_frame_posterior_std"]
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out / "grid.png")
    (out / "quality.json").write_text(json.dumps(report, indent=1))
    (out / "recipe.json").write_text(json.dumps({"key": key, "recipe": recipe}, indent=1))
    log.info("toy backbone %s written to %s", key, out)
    return out
