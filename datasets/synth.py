"""Synthetic VAP-Data: small real mp4 clips for all four categories, in VAP-Data's CSV layout.

Each condition is a function that renders a clip from a random scene (colours, shape, place)
and the caption phrase that names the condition. Clips of one condition share the semantics
(a shatter, a sepia palette, a bounce, a zoom) and differ in content, which is what a VAP
reference must teach. The output is read by the same `ingest` as the real dataset; the CSV has
no category column (like VAP-Data), so `SYNTH_CATEGORIES` maps each condition to its category.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
from rich.progress import track

from vap import storage
from vap.errors import DataError

log = logging.getLogger(__name__)

COLORS = {
    "red": (220, 40, 40), "green": (40, 190, 70), "blue": (40, 80, 230), "yellow": (235, 210, 40),
    "purple": (150, 60, 200), "orange": (240, 140, 30), "white": (240, 240, 240), "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "diamond")
NORMS = {"circle": 2.0, "square": 12.0, "diamond": 1.0}  # the p of each shape's p-norm ball
CSV_COLUMNS = ("video_paths", "ref_video_paths", "tar_video_caption", "kind", "split", "reference_alignment_score")


@dataclass(frozen=True)
class Scene:
    """The content of one clip, drawn at random: what the caption describes."""

    fg: str
    bg: str
    shape: str
    x: float  # centre, as a fraction of the frame
    y: float
    radius: float  # as a fraction of the frame
    phase: float  # in [0, 1): where a periodic motion starts

    def caption(self, phrase: str) -> str:
        article = "an" if self.fg[0] in "aeiou" else "a"
        return f"{article} {self.fg} {self.shape} on a {self.bg} background {phrase}"


def _scene(rng: np.random.Generator) -> Scene:
    fg, bg = rng.choice(list(COLORS), size=2, replace=False)
    return Scene(str(fg), str(bg), str(rng.choice(SHAPES)), float(rng.uniform(0.35, 0.65)),
                 float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.16, 0.24)), float(rng.uniform()))


# ---- drawing: float RGB canvases [H, W, 3] in 0..255 ----------------------------------------

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return (xx + 0.5) / size, (yy + 0.5) / size


def _mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Inside-mask of a shape centred at 0."""
    p = NORMS[shape]
    return (np.abs(dx) ** p + np.abs(dy) ** p) ** (1.0 / p) < r


def _paint(canvas: np.ndarray, mask: np.ndarray, color: str | tuple) -> np.ndarray:
    canvas[mask] = COLORS[color] if isinstance(color, str) else color
    return canvas


def _background(s: Scene, size: int) -> np.ndarray:
    return np.broadcast_to(np.array(COLORS[s.bg], np.float32), (size, size, 3)).copy()


def _object(s: Scene, size: int, x: float, y: float, r: float) -> np.ndarray:
    gx, gy = _grid(size)
    return _paint(_background(s, size), _mask(s.shape, gx - x, gy - y, r), s.fg)


# ---- concept: the object itself changes -------------------------------------------------------

def _morph(s, t, size, rng):  # the shape's outline blends into another shape's
    gx, gy = _grid(size)
    dx, dy = gx - s.x, gy - s.y
    target = "square" if s.shape == "circle" else "circle"
    dist = [(np.abs(dx) ** p + np.abs(dy) ** p) ** (1 / p) for p in (NORMS[s.shape], NORMS[target])]
    return [_paint(_background(s, size), (1 - ti) * dist[0] + ti * dist[1] < s.radius, s.fg) for ti in t]


def _shatter(s, t, size, rng):  # four quadrants fly apart
    gx, gy = _grid(size)
    out = []
    for ti in t:
        c = _background(s, size)
        d = 0.3 * ti
        for sx in (-1, 1):
            for sy in (-1, 1):
                cx, cy = s.x + sx * d, s.y + sy * d
                inside = _mask(s.shape, gx - cx, gy - cy, s.radius) & (np.sign(gx - cx) == sx) & (np.sign(gy - cy) == sy)
                _paint(c, inside, s.fg)
        out.append(c)
    return out


def _grow(s, t, size, rng):
    return [_object(s, size, s.x, s.y, 0.05 + 0.3 * ti) for ti in t]


def _dissolve(s, t, size, rng):  # pixels vanish in a fixed random order
    order = rng.uniform(size=(size, size))
    gx, gy = _grid(size)
    inside = _mask(s.shape, gx - s.x, gy - s.y, s.radius)
    return [_paint(_background(s, size), inside & (order >= ti), s.fg) for ti in t]


def _split(s, t, size, rng):  # left and right halves slide apart
    gx, gy = _grid(size)
    out = []
    for ti in t:
        c = _background(s, size)
        for sx in (-1, 1):
            cx = s.x + sx * 0.25 * ti
            _paint(c, _mask(s.shape, gx - cx, gy - s.y, s.radius) & (np.sign(gx - cx) == sx), s.fg)
        out.append(c)
    return out


def _petrify(s, t, size, rng):  # colour drains to a grainy stone grey
    grain = rng.normal(0, 25, size=(size, size, 1))
    gx, gy = _grid(size)
    inside = _mask(s.shape, gx - s.x, gy - s.y, s.radius)
    out = []
    for ti in t:
        stone = (1 - ti) * np.array(COLORS[s.fg], np.float32) + ti * (128 + grain)
        c = _background(s, size)
        c[inside] = stone[inside] if stone.ndim == 3 else stone
        out.append(c)
    return out


# ---- style: a slowly drifting object, seen through a palette or texture ----------------------

def _drift(s, t, size):
    return [_object(s, size, s.x - 0.1 + 0.2 * ti, s.y, s.radius) for ti in t]


def _styled(fn: Callable[[np.ndarray, int], np.ndarray]):
    def render(s, t, size, rng):
        return [fn(c, size) for c in _drift(s, t, size)]
    return render


def _sepia(c, size):
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
    return c @ m.T


def _grayscale(c, size):
    return np.repeat(c @ np.array([[0.299], [0.587], [0.114]], np.float32), 3, axis=2)


def _neon(c, size):  # dark frame, bright edges
    g = _grayscale(c, size)[..., 0]
    edge = (np.abs(np.diff(g, axis=0, prepend=g[:1])) + np.abs(np.diff(g, axis=1, prepend=g[:, :1]))) > 10
    out = np.full_like(c, 15.0)
    out[edge] = (255, 40, 230)
    return out


def _stripes(c, size):
    gx, gy = _grid(size)
    return c * (0.55 + 0.45 * (np.floor((gx + gy) * 8) % 2))[..., None]


def _checker(c, size):
    gx, gy = _grid(size)
    return c * (0.55 + 0.45 * ((np.floor(gx * 6) + np.floor(gy * 6)) % 2))[..., None]


def _invert(c, size):
    return 255.0 - c


# ---- motion: the object follows a trajectory or a rhythm -------------------------------------

def _slide_right(s, t, size, rng):
    return [_object(s, size, 0.2 + 0.6 * ti, s.y, s.radius * 0.8) for ti in t]


def _bounce(s, t, size, rng):
    return [_object(s, size, s.x, 0.75 - 0.5 * abs(np.sin(np.pi * (2 * ti + s.phase))), s.radius * 0.8) for ti in t]


def _circle_path(s, t, size, rng):
    a = 2 * np.pi * (t + s.phase)
    return [_object(s, size, 0.5 + 0.25 * np.cos(ai), 0.5 + 0.25 * np.sin(ai), s.radius * 0.7) for ai in a]


def _zigzag(s, t, size, rng):
    return [_object(s, size, 0.2 + 0.6 * ti, 0.5 + 0.2 * (1 - 2 * abs((3 * ti) % 2 - 1)), s.radius * 0.7) for ti in t]


def _pulse(s, t, size, rng):
    return [_object(s, size, s.x, s.y, s.radius * (1 + 0.5 * np.sin(2 * np.pi * (2 * ti + s.phase)))) for ti in t]


def _blink(s, t, size, rng):
    return [_object(s, size, s.x, s.y, s.radius if int(6 * ti) % 2 == 0 else 0.0) for ti in t]


# ---- camera: a fixed textured world seen through a moving view -------------------------------

def _world(s: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """A 2x-size scene with a few objects, so the view has something to move over."""
    big = 2 * size
    gx, gy = _grid(big)
    world = _background(s, big) * (0.85 + 0.15 * ((np.floor(gx * 8) + np.floor(gy * 8)) % 2))[..., None]
    for k in range(5):
        color = s.fg if k == 0 else str(rng.choice(list(COLORS)))
        _paint(world, _mask(str(rng.choice(SHAPES)), gx - rng.uniform(0.1, 0.9), gy - rng.uniform(0.1, 0.9), 0.08), color)
    return world


def _view(world: np.ndarray, size: int, cx: float, cy: float, scale: float, angle: float) -> np.ndarray:
    """Sample a size x size view centred at (cx, cy) (fractions of the world), `scale` world
    widths across, rotated by `angle`; the world wraps around at its edges."""
    gx, gy = _grid(size)
    u, v = (gx - 0.5) * scale, (gy - 0.5) * scale
    ca, sa = np.cos(angle), np.sin(angle)
    wx, wy = cx + ca * u - sa * v, cy + sa * u + ca * v
    n = world.shape[0]
    return world[(np.floor(wy * n).astype(int)) % n, (np.floor(wx * n).astype(int)) % n]


def _camera(path: Callable[[float], tuple[float, float, float, float]]):
    def render(s, t, size, rng):
        world = _world(s, size, rng)
        return [_view(world, size, *path(ti)) for ti in t]
    return render


# name → (category, caption phrase, renderer(scene, t, size, rng) -> frames)
CONDITIONS: dict[str, tuple[str, str, Callable]] = {
    "morph": ("concept", "that morphs into another shape", _morph),
    "shatter": ("concept", "that shatters into four pieces", _shatter),
    "grow": ("concept", "that grows from a dot to a giant", _grow),
    "dissolve": ("concept", "that dissolves into nothing", _dissolve),
    "split": ("concept", "that splits into two halves", _split),
    "petrify": ("concept", "that turns to grey stone", _petrify),
    "sepia": ("style", "in an old sepia photo style", _styled(_sepia)),
    "grayscale": ("style", "in black and white", _styled(_grayscale)),
    "neon": ("style", "drawn as glowing neon outlines", _styled(_neon)),
    "stripes": ("style", "with a diagonal striped texture", _styled(_stripes)),
    "checker": ("style", "with a checkerboard texture", _styled(_checker)),
    "invert": ("style", "in inverted colours", _styled(_invert)),
    "slide_right": ("motion", "sliding from left to right", _slide_right),
    "bounce": ("motion", "bouncing up and down", _bounce),
    "circle_path": ("motion", "moving in a circle", _circle_path),
    "zigzag": ("motion", "zigzagging across", _zigzag),
    "pulse": ("motion", "pulsing in rhythm", _pulse),
    "blink": ("motion", "blinking on and off", _blink),
    "pan_left": ("camera", "as the camera pans left", _camera(lambda t: (0.65 - 0.3 * t, 0.5, 0.5, 0.0))),
    "pan_right": ("camera", "as the camera pans right", _camera(lambda t: (0.35 + 0.3 * t, 0.5, 0.5, 0.0))),
    "zoom_in": ("camera", "as the camera zooms in", _camera(lambda t: (0.5, 0.5, 0.8 - 0.5 * t, 0.0))),
    "zoom_out": ("camera", "as the camera zooms out", _camera(lambda t: (0.5, 0.5, 0.3 + 0.5 * t, 0.0))),
    "orbit": ("camera", "as the camera orbits around it", _camera(lambda t: (0.5, 0.5, 0.5, 0.5 * np.pi * t))),
    "tilt_up": ("camera", "as the camera tilts up", _camera(lambda t: (0.5, 0.65 - 0.3 * t, 0.5, 0.0))),
}
# VAP-Data's CSV has no category column: this table is how ingest knows the synthetic ones.
SYNTH_CATEGORIES: dict[str, str] = {name: cat for name, (cat, _, _) in CONDITIONS.items()}


@dataclass(frozen=True)
class SynthSummary:
    clips: int
    conditions: int
    csv: str  # URI of metadata.csv
    skipped: bool = False  # True when `out` already held this exact dataset

    def summary(self) -> str:
        state = "already up to date" if self.skipped else "written"
        return f"{self.clips} clips of {self.conditions} conditions {state}: {self.csv}"


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """H.264 (yuv420p) mp4 bytes from uint8 RGB frames [F, H, W, 3] (H and W even)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_rate(fps), options={"qp": "18", "preset": "veryfast"})
        # One thread and constant QP: x264 then gives the same bytes every run (CRF rate
        # control and frame threads do not, now and then).
        stream.thread_count = 1
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


# ---- neutral starts: counterfactual clips for the claims run (docs/CLAIMS.md) -----------------
# Each condition again, moved so that it starts from its scene at rest: for concept, style and
# motion the object at its place (the same picture for all 18), for camera the view at the
# world's centre. Every move is continuous from there, so a VAE sees no cut at the first frame.

def _triangle(u):  # 0 at u = 0, up to 1 at u = 0.5, down to -1 at u = 1.5, period 2
    return 1 - 2 * np.abs((u + 0.5) % 2 - 1)


def _moving(path: Callable[[Scene, float], tuple[float, float, float]]):
    def render(s, t, size, rng):
        return [_object(s, size, *path(s, ti)) for ti in t]
    return render


def _fading_in(fn: Callable[[np.ndarray, int], np.ndarray]):  # the style grows from none to full
    def render(s, t, size, rng):
        frames = _moving(lambda s, ti: (s.x + 0.15 * ti, s.y, s.radius))(s, t, size, rng)
        return [(1 - ti) * c + ti * fn(c, size) for c, ti in zip(frames, t, strict=True)]
    return render


NEUTRAL: dict[str, Callable] = {  # the conditions whose own first frame is not their scene at rest
    "grow": _moving(lambda s, t: (s.x, s.y, s.radius * (1 + 1.2 * t))),
    **{name: _fading_in(fn) for name, fn in {"sepia": _sepia, "grayscale": _grayscale, "neon": _neon,
                                             "stripes": _stripes, "checker": _checker, "invert": _invert}.items()},
    "slide_right": _moving(lambda s, t: (s.x + (0.85 - s.x) * t, s.y, s.radius)),
    "bounce": _moving(lambda s, t: (s.x, s.y - 0.25 * abs(np.sin(2 * np.pi * t)), s.radius)),
    "circle_path": _moving(lambda s, t: (s.x - 0.2 + 0.2 * np.cos(2 * np.pi * t), s.y + 0.2 * np.sin(2 * np.pi * t),
                                         s.radius)),
    "zigzag": _moving(lambda s, t: (s.x + (0.85 - s.x) * t, s.y + 0.2 * _triangle(3 * t), s.radius)),
    "pulse": _moving(lambda s, t: (s.x, s.y, s.radius * (1 + 0.5 * np.sin(4 * np.pi * t)))),
    "blink": _moving(lambda s, t: (s.x, s.y, s.radius if int(6 * t) % 2 == 0 else 0.0)),
    "pan_left": _camera(lambda t: (0.5 - 0.3 * t, 0.5, 0.5, 0.0)),
    "pan_right": _camera(lambda t: (0.5 + 0.3 * t, 0.5, 0.5, 0.0)),
    "zoom_in": _camera(lambda t: (0.5, 0.5, 0.5 - 0.3 * t, 0.0)),
    "zoom_out": _camera(lambda t: (0.5, 0.5, 0.5 + 0.4 * t, 0.0)),
    "tilt_up": _camera(lambda t: (0.5, 0.5 - 0.3 * t, 0.5, 0.0)),
}  # morph, shatter, dissolve, split, petrify and orbit already start at rest
STARTS = ("natural", "neutral")


def render_clip(condition: str, seed: int, index: int, *, frames: int, size: int,
                start: str = "natural") -> tuple[np.ndarray, str]:
    """(uint8 frames [F, size, size, 3], caption) of clip `index` of `condition`; pure.

    start="neutral" renders counterfactual clips: clip `index` of every condition shares one
    scene (colours, shape, place, camera world) and starts from it at rest (`NEUTRAL`), so a
    first frame and its caption have one continuation per condition and only a reference clip
    tells which."""
    if start not in STARTS:
        raise DataError(f"start={start!r}: use one of {', '.join(STARTS)}")
    category, phrase, render = CONDITIONS[condition]
    if start == "neutral":
        render = NEUTRAL.get(condition, render)
    # Seed per (seed, condition, index): a clip never changes when others are added. Neutral
    # starts seed per (seed, index) instead, so the conditions of a scene draw the same scene.
    key = f"{seed}/{condition}/{index}" if start == "natural" else f"{seed}/scene/{index}"
    digest = hashlib.sha256(key.encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    scene = _scene(rng)
    t = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    video = np.clip(np.stack(render(scene, t, size, rng)), 0, 255).astype(np.uint8)
    return video, scene.caption(phrase)


def _clip_name(condition: str, index: int) -> str:
    return f"videos/{condition}_{index:03d}.mp4"


def scene_twins(clip_id: str, conditions: list[str]) -> dict[str, str]:
    """The ids of clip `clip_id`'s scene under each of `conditions`: in a neutral-start set clip i
    of every condition is one scene ("videos/bounce_003" -> {"sepia": "videos/sepia_003", ...})."""
    folder, _, name = clip_id.rpartition("/")
    condition, _, index = name.rpartition("_")
    if condition not in CONDITIONS or not index.isdigit():
        raise DataError(f"{clip_id}: not a synthetic clip id (<folder>/<condition>_<index>); twins need "
                        "`vap data synth` clips")
    return {c: f"{folder}/{c}_{index}" if folder else f"{c}_{index}" for c in conditions}


def pick_conditions(per_category: int) -> list[str]:
    by_cat: dict[str, list[str]] = {}
    for name, (cat, _, _) in CONDITIONS.items():
        by_cat.setdefault(cat, []).append(name)
    most = min(len(v) for v in by_cat.values())
    if not 1 <= per_category <= most:
        raise DataError(f"conditions_per_category={per_category}: the generator has 1..{most} per category; pick one in that range")
    return [name for names in by_cat.values() for name in names[:per_category]]


def synthesize(out: str, *, conditions_per_category: int = 4, clips_per_condition: int = 4,
               frames: int = 17, fps: float = 8.0, size: int = 32, seed: int = 0, progress: bool = True,
               conditions: list[str] | None = None, start: str = "natural") -> SynthSummary:
    """Write a synthetic VAP-Data set to `out` (path or s3:// URI): `videos/*.mp4` and
    `metadata.csv` with VAP-Data's columns (`kind` is the condition; `ref_video_paths` lists the
    other clips of that condition). Deterministic for a seed; re-running with the same settings
    finds `synth.json` (written last) and does nothing.

    For the claims run (docs/CLAIMS.md): `conditions` names the conditions instead of the first
    `conditions_per_category` of each category, and start="neutral" writes counterfactual clips
    (`render_clip`). With neither, the output is what it always was, byte for byte."""
    if size < 16 or size % 2:
        raise DataError(f"size={size}: H.264 yuv420p needs an even size of at least 16; pick e.g. 32")
    if clips_per_condition < 2:
        raise DataError(f"clips_per_condition={clips_per_condition}: pairs need at least 2 clips per condition")
    if frames < 1 or fps <= 0:
        raise DataError(f"frames={frames}, fps={fps}: need at least 1 frame and a positive fps")
    if conditions is not None:
        unknown = sorted(set(conditions) - set(CONDITIONS))
        if unknown or not conditions:
            raise DataError(f"conditions={conditions}: unknown {unknown}; pick from {', '.join(CONDITIONS)}")
    else:
        conditions = pick_conditions(conditions_per_category)
    settings = {"conditions": conditions, "clips_per_condition": clips_per_condition, "frames": frames,
                "fps": fps, "size": size, "seed": seed, "format": 2}
    if start != "natural":  # only then: the marker of a default set stays what it was
        settings["start"] = start
    csv_uri, marker = storage.join(out, "metadata.csv"), storage.join(out, "synth.json")
    n_clips = len(conditions) * clips_per_condition
    if storage.exists(marker) and json.loads(storage.read_bytes(marker)) == settings and storage.exists(csv_uri):
        log.info("%s already holds this synthetic set; nothing to do", out)
        return SynthSummary(n_clips, len(conditions), csv_uri, skipped=True)

    rows = []
    jobs = [(c, i) for c in conditions for i in range(clips_per_condition)]
    for condition, i in track(jobs, "synthesising clips", disable=not progress, transient=True):
        name = _clip_name(condition, i)
        video, caption = render_clip(condition, seed, i, frames=frames, size=size, start=start)
        storage.write_bytes(storage.join(out, name), encode_mp4(video, fps))
        # A stand-in for VAP-Data's score, stable per clip, on the authors' scale (their filter keeps > 10).
        score = 60 + 40 * int(hashlib.sha256(name.encode()).hexdigest()[:4], 16) / 0xFFFF
        refs = [_clip_name(condition, k) for k in range(clips_per_condition) if k != i]
        rows.append({
            "video_paths": name, "ref_video_paths": json.dumps(refs), "tar_video_caption": caption,
            "kind": condition, "split": "train", "reference_alignment_score": f"{score:.3f}",
        })
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes(csv_uri, text.getvalue().encode())
    storage.write_bytes(marker, json.dumps(settings, indent=1).encode())
    log.info("wrote %d clips of %d conditions to %s", n_clips, len(conditions), out)
    return SynthSummary(n_clips, len(conditions), csv_uri)

