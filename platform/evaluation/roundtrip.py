"""Can the judge still name a condition after a VAE round trip? (docs/CLAIMS.md §1)

`vap eval` judges decoded videos, so a condition the VAE cannot carry through encode → decode is
invisible to it however good the expert is. `roundtrip_report` measures that on labelled clips:
the recogniser's top-1 per category on the clean clips and on their round trips, the round
trip's PSNR and its temporal-difference error — how well the frame-to-frame change (motion,
camera moves, blinks) survives, which per-pixel PSNR hides when a static blob is reconstructed
well and its movement is not.

    report = roundtrip_report(vae, load_recogniser(), clips, conditions)
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def vae_roundtrip(vae, clips: np.ndarray, batch: int = 16) -> np.ndarray:
    """uint8 clips [N, F, H, W, 3] encoded (posterior mode, as `vap data build` stores) and decoded."""
    x = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    out = []
    for i in range(0, len(x), batch):
        y = vae.decode(vae.encode(x[i:i + batch]).latent_dist.mode()).sample
        out.append(((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy())
    return np.concatenate(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8-range arrays."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def temporal_error(recon: np.ndarray, clean: np.ndarray) -> dict:
    """How the frame-to-frame differences of a round trip compare with the clean clip's:
    `mae`: mean abs error of the differences (0-255); `kept`: mean |diff| of the round trip over
    the clean clip's (1 = as much change, 0 = a frozen clip)."""
    d_recon = np.diff(recon.astype(np.float64), axis=1)
    d_clean = np.diff(clean.astype(np.float64), axis=1)
    return {"mae": float(np.abs(d_recon - d_clean).mean()),
            "kept": float(np.abs(d_recon).mean() / max(np.abs(d_clean).mean(), 1e-9))}


def _accuracy(rec, clips: np.ndarray, labels: np.ndarray, cats: np.ndarray) -> dict:
    pred = np.asarray(rec.predict_proba(clips).argmax(1))
    out = {"overall": float((pred == labels).mean())}
    out.update({str(c): float((pred[cats == c] == labels[cats == c]).mean()) for c in sorted(set(cats))})
    return out


def roundtrip_report(vae, rec, clips: np.ndarray, conditions: list[str]) -> dict:
    """Recogniser top-1 (overall and per category) on clean clips and on their VAE round trips,
    and the round trip's PSNR and temporal error overall and per category."""
    recon = vae_roundtrip(vae, clips)
    labels = np.array([rec.conditions.index(c) for c in conditions])
    cats = np.array([rec.category_of[c] for c in conditions], dtype=object)
    per_cat = {}
    for c in sorted(set(cats)):
        m = cats == c
        per_cat[str(c)] = {"psnr_db": psnr(recon[m], clips[m]), **temporal_error(recon[m], clips[m])}
    return {"clips": int(len(clips)),
            "top1_clean": _accuracy(rec, clips, labels, cats),
            "top1_roundtrip": _accuracy(rec, recon, labels, cats),
            "psnr_db": psnr(recon, clips), "temporal": temporal_error(recon, clips), "per_category": per_cat}
