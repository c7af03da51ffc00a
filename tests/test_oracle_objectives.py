"""Each family's training objective against its closed form.

The engine is a stub that is called exactly like the real one and answers with the target the
paper's formula gives (computed here from the scheduler's config, not by the code under test),
optionally off by a known error. A perfect prediction must give zero loss; a known error must
give the loss worked out by hand.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from test_model_helpers import LATENT, shard_batch

from vap.training.families import get_family

C = LATENT["channels"]


def cogvideox_alphas_cumprod(config: dict) -> torch.Tensor:
    """ᾱ_t from the scheduler config: scaled-linear betas, CogVideoX's SNR shift
    ᾱ / (s + (1 - s) ᾱ), then the zero-terminal-SNR rescale (Lin et al. 2023, Alg. 1)."""
    assert config["beta_schedule"] == "scaled_linear"
    n = config["num_train_timesteps"]
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    s = config["snr_shift_scale"]
    abar = abar / (s + (1 - s) * abar)
    if config["rescale_betas_zero_snr"]:
        root = abar.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        abar = ((root - last) * first / (first - last)) ** 2
    return abar


class StubEngine:
    """Called like the DeepSpeed engine / VAPTransformer; predicts `target(noisy, t) + error`."""

    def __init__(self, backbone_config: dict, target, error: float | None):
        self.config = SimpleNamespace(backbone_config=backbone_config)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.target, self.error, self.seen = target, error, []

    def __call__(self, hidden_states, timestep, return_dict, **kwargs):
        assert return_dict is False
        self.seen.append((hidden_states, timestep))
        if self.error is None:  # predicts zeros: the error is minus the target
            return (torch.zeros_like(hidden_states[self.target.noisy_slice]),)
        return (self.target(hidden_states, timestep) + self.error,)


def backbone_config(tiny_backbones, family: str) -> dict:
    return json.loads((tiny_backbones[family] / "transformer" / "config.json").read_text())


def scheduler_config(tiny_backbones, family: str) -> dict:
    return json.loads((tiny_backbones[family] / "scheduler" / "scheduler_config.json").read_text())


class CogVideoXTarget:
    """v = √ᾱ ε − √(1−ᾱ) x0, with ε recovered from the noisy latents the engine is given."""

    noisy_slice = (slice(None), slice(None), slice(0, C))  # [B, F, C, h, w], condition after C

    def __init__(self, batch, abar):
        self.x0 = batch["target_latent"].double().permute(0, 2, 1, 3, 4)
        self.abar = abar

    def coefficients(self, timestep):
        a = self.abar[timestep.long()].view(-1, 1, 1, 1, 1)
        return a.sqrt(), (1 - a).sqrt()

    def __call__(self, hidden_states, timestep):
        noisy = hidden_states[self.noisy_slice].double()
        sa, s1a = self.coefficients(timestep)
        eps = (noisy - sa * self.x0) / s1a
        return (sa * eps - s1a * self.x0).float()

    def loss_of_zero(self, hidden_states, timestep):
        """pred = 0 → x̂0 = √ᾱ x_t; loss = mean_b( mean((x̂0 − x0)²) / (1−ᾱ_b) )."""
        noisy = hidden_states[self.noisy_slice].double()
        sa, s1a = self.coefficients(timestep)
        per_sample = ((sa * noisy - self.x0) ** 2).flatten(1).mean(1)
        return (per_sample / (s1a.flatten() ** 2)).mean()


class WanTarget:
    """Flow matching: x_t = (1−σ) x0 + σ ε, target ε − x0 = (x_t − x0) / σ, σ = t / N."""

    noisy_slice = (slice(None), slice(0, C))  # [B, C, F, h, w], mask and image after C

    def __init__(self, batch, num_train_timesteps):
        self.x0 = batch["target_latent"].double()
        self.n = num_train_timesteps

    def __call__(self, hidden_states, timestep):
        noisy = hidden_states[self.noisy_slice].double()
        sigma = (timestep.double() / self.n).view(-1, 1, 1, 1, 1)
        return ((noisy - self.x0) / sigma).float()

    def loss_of_zero(self, hidden_states, timestep):
        return (self(hidden_states, timestep).double() ** 2).mean()


def make_target(family, batch, tiny_backbones):
    config = scheduler_config(tiny_backbones, family)
    if family == "cogvideox":
        return CogVideoXTarget(batch, cogvideox_alphas_cumprod(config))
    return WanTarget(batch, config.get("num_train_timesteps", 1000))


def test_cogvideox_alphas_match_diffusers(tiny_backbones):
    """The closed form above is the schedule diffusers builds from the same config."""
    from diffusers import CogVideoXDDIMScheduler

    scheduler = CogVideoXDDIMScheduler.from_pretrained(tiny_backbones["cogvideox"], subfolder="scheduler")
    ours = cogvideox_alphas_cumprod(dict(scheduler.config))
    torch.testing.assert_close(ours.float(), scheduler.alphas_cumprod.float(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
@pytest.mark.parametrize("error", [0.0, 0.3])
def test_constant_error_gives_its_square(family, error, tiny_backbones):
    """An exact prediction gives 0; a constant error δ on the model output gives δ²: for
    CogVideoX x̂0 − x0 = −√(1−ᾱ) δ, and the 1/(1−ᾱ) weight cancels the (1−ᾱ) it brings."""
    batch = shard_batch(family, batch=4, seed=1)
    engine = StubEngine(backbone_config(tiny_backbones, family), make_target(family, batch, tiny_backbones), error)
    objective = get_family(family).objective(str(tiny_backbones[family]))
    loss = objective(engine, batch, generator=torch.Generator().manual_seed(0))
    assert len(engine.seen) == 1
    assert loss.item() == pytest.approx(error ** 2, abs=1e-5)


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_zero_prediction_gives_the_hand_computed_weighted_loss(family, tiny_backbones):
    """Predicting zeros is off by the whole target: the loss is the weighted mean square of
    the target, computed here from the noisy latents and timesteps the engine was given."""
    batch = shard_batch(family, batch=4, seed=2)
    target = make_target(family, batch, tiny_backbones)
    engine = StubEngine(backbone_config(tiny_backbones, family), target, None)
    objective = get_family(family).objective(str(tiny_backbones[family]))
    loss = objective(engine, batch, generator=torch.Generator().manual_seed(5))
    hidden_states, timestep = engine.seen[0]
    expected = target.loss_of_zero(hidden_states, timestep).item()
    assert expected > 0.1  # the target is far from zero: the comparison has something to measure
    assert loss.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_noise_draws_follow_the_papers_distributions(family, tiny_backbones):
    """The loss oracles above recover ε from what the engine is given, so they hold for any
    noise; this one checks the draws: ε ~ N(0, 1) per element; CogVideoX t ~ U{0, …, N−1};
    Wan σ = t/N logit-normal(0, 1). Bounds are 5 standard errors of n draws (a false alarm
    about once in 3 million runs), so a wrong distribution (scale, shift, range) is caught."""
    n = 512
    batch = shard_batch(family, batch=n, seed=3)
    target = make_target(family, batch, tiny_backbones)
    engine = StubEngine(backbone_config(tiny_backbones, family), target, 0.0)
    objective = get_family(family).objective(str(tiny_backbones[family]))
    objective(engine, batch, generator=torch.Generator().manual_seed(7))
    hidden_states, timestep = engine.seen[0]
    noisy, t = hidden_states[target.noisy_slice].double(), timestep.double()
    steps = scheduler_config(tiny_backbones, family).get("num_train_timesteps", 1000)
    if family == "cogvideox":
        sa, s1a = target.coefficients(timestep)
        eps = (noisy - sa * target.x0) / s1a
        assert t.min() >= 0 and t.max() <= steps - 1 and torch.equal(t, t.round())
        sd = steps / 12 ** 0.5 / n ** 0.5  # standard error of the mean of U{0, …, N−1}
        assert abs(t.mean().item() - (steps - 1) / 2) < 5 * sd
    else:
        sigma = t / steps
        eps = (noisy - (1 - sigma.view(-1, 1, 1, 1, 1)) * target.x0) / sigma.view(-1, 1, 1, 1, 1)
        logit = torch.log(sigma / (1 - sigma))
        assert abs(logit.mean().item()) < 5 / n ** 0.5 and abs(logit.std().item() - 1) < 5 / (2 * n) ** 0.5
    m = eps.numel()  # float16 latents: ε is recovered to ~1e-3, far inside these bounds
    assert abs(eps.mean().item()) < 5 / m ** 0.5 and abs(eps.std().item() - 1) < 5 / (2 * m) ** 0.5


def test_caption_dropout_blanks_both_captions_of_the_drawn_samples():
    """Sample b is dropped when the generator's b-th uniform draw is below p (the paper's 2 %):
    both its captions become the empty caption's embedding, the others stay as they were."""
    from vap.errors import DataError
    from vap.training.objectives import drop_captions

    g = torch.Generator().manual_seed(11)
    text, ref = torch.randn(8, 3, 2, generator=g), torch.randn(8, 3, 2, generator=g)
    null = torch.full((3, 2), 7.0)
    assert drop_captions(text, ref, None, 0.0, None) == (text, ref)
    out_text, out_ref = drop_captions(text, ref, null, 0.5, torch.Generator().manual_seed(3))
    dropped = torch.rand(8, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0 < dropped.sum() < 8  # this seed drops some and keeps some
    for b in range(8):
        want_t, want_r = (null, null) if dropped[b] else (text[b], ref[b])
        assert torch.equal(out_text[b], want_t) and torch.equal(out_ref[b], want_r)
    all_t, all_r = drop_captions(text, ref, null, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(all_t, null.expand_as(text)) and torch.equal(all_r, null.expand_as(ref))
    # the empty caption takes the captions' dtype (bfloat16 on a GPU), whatever it was stored as
    half_t, half_r = drop_captions(text.bfloat16(), ref.bfloat16(), null, 1.0, torch.Generator().manual_seed(0))
    assert half_t.dtype == half_r.dtype == torch.bfloat16
    with pytest.raises(DataError, match=r"^caption dropout needs the empty-caption embedding \(null_text.npy of "):
        drop_captions(text, ref, None, 0.1, g)
    with pytest.raises(DataError, match=r"^null_text has shape \(4, 2\) but captions are \(3, 2\); rebuild the "
                                        r"snapshot with one text length$"):
        drop_captions(text, ref, torch.zeros(4, 2), 0.1, g)


def test_the_objective_reads_a_wrapped_engines_module_and_the_default_timesteps(tiny_backbones):
    """A DeepSpeed engine keeps the model under `.module`; a scheduler config without
    num_train_timesteps means diffusers' default, 1000."""
    from vap.training.objectives import Objective

    batch = shard_batch("wan", batch=2, seed=4)
    stub = StubEngine(backbone_config(tiny_backbones, "wan"), make_target("wan", batch, tiny_backbones), 0.0)

    class Wrapped:  # only the wrapper is called; only the module has a config
        module = SimpleNamespace(config=stub.config, device=stub.device, dtype=stub.dtype)

        def __call__(self, **kw):
            return stub(**kw)

    objective = get_family("wan").objective(str(tiny_backbones["wan"]))
    assert objective(Wrapped(), batch, generator=torch.Generator().manual_seed(0)).item() == pytest.approx(0, abs=1e-5)
    assert Objective(get_family("wan"), {}).num_train_timesteps == 1000
    assert Objective(get_family("wan"), {"num_train_timesteps": 10}).num_train_timesteps == 10


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_draws_are_seeded_and_every_input_reaches_the_engine(family, tiny_backbones):
    """The same generator seed gives the same noise, timesteps and caption dropout (a resumed run
    repeats its draws); the engine gets the batch's captions and the clean reference."""
    batch = shard_batch(family, batch=4, seed=6)
    objective = get_family(family).objective(str(tiny_backbones[family]))
    runs = []
    for seed in (1, 1, 2):
        engine = RecordingEngine(backbone_config(tiny_backbones, family), make_target(family, batch, tiny_backbones))
        null = torch.zeros(batch["target_text"].shape[1:])
        objective(engine, batch, generator=torch.Generator().manual_seed(seed), caption_dropout=0.5, null_text=null)
        runs.append(engine.kwargs)
    for key in ("hidden_states", "timestep", "encoder_hidden_states"):
        assert torch.equal(runs[0][key], runs[1][key]), key
    assert not torch.equal(runs[0]["hidden_states"], runs[2]["hidden_states"])
    kw = runs[0]
    kept = [b for b in range(4) if kw["encoder_hidden_states"][b].abs().sum() > 0]
    for b in kept:  # captions as the batch holds them (dropped ones are the empty caption's zeros here)
        torch.testing.assert_close(kw["encoder_hidden_states"][b], batch["target_text"][b].float())
        torch.testing.assert_close(kw["reference_encoder_hidden_states"][b], batch["reference_text"][b].float())
    ref = kw["reference_hidden_states"][target_slice(family)]
    layout = (0, 2, 1, 3, 4) if family == "cogvideox" else (0, 1, 2, 3, 4)
    torch.testing.assert_close(ref, batch["reference_latent"].float().permute(*layout))  # clean: never noised
    if family == "wan":
        torch.testing.assert_close(kw["encoder_hidden_states_image"], batch["target_image_embed"].float())


def test_cogvideox_timesteps_cover_the_whole_range(tiny_backbones):
    """t ~ U{0, …, N−1}: in 20 000 draws both ends appear (missing one has odds ≈ e^-20)."""
    objective = get_family("cogvideox").objective(str(tiny_backbones["cogvideox"]))
    _, t, _ = objective.noise(torch.zeros(20_000, 1, 1, 1, 1), torch.Generator().manual_seed(0))
    assert t.min() == 0 and t.max() == objective.num_train_timesteps - 1


def target_slice(family):
    return (slice(None), slice(None), slice(0, C)) if family == "cogvideox" else (slice(None), slice(0, C))


class RecordingEngine(StubEngine):
    def __init__(self, backbone_config, target):
        super().__init__(backbone_config, target, 0.0)

    def __call__(self, hidden_states, timestep, return_dict, **kwargs):
        self.kwargs = dict(kwargs, hidden_states=hidden_states, timestep=timestep)
        return super().__call__(hidden_states, timestep, return_dict)


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_noisy_latents_keep_the_models_dtype(family, tiny_backbones):
    """A bfloat16 model (GPU) gets bfloat16 noisy latents: the noise is mixed in float32, then cast."""
    batch = shard_batch(family, batch=2, seed=8)
    engine = StubEngine(backbone_config(tiny_backbones, family), make_target(family, batch, tiny_backbones), 0.0)
    engine.dtype = torch.bfloat16
    get_family(family).objective(str(tiny_backbones[family]))(engine, batch, generator=torch.Generator().manual_seed(0))
    assert engine.seen[0][0].dtype == torch.bfloat16
