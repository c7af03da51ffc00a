"""Decode clips with PyAV: `probe` measures a clip, `read_frames` returns its pixels, and
`check_clip` turns a clip into a quarantine reason (or None when it is usable).

A clip is decoded completely: opening an mp4 only reads its header, and a truncated file or a
text file named `.mp4` may only fail frames later.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np

from vap import storage
from vap.datasets.records import ClipInfo
from vap.errors import DataError, StorageError


class ClipProblem(DataError):
    """A clip fails validation; `reason` is the short code counted in quarantine summaries."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# How video containers begin (mp4/mov `ftyp` at byte 4, Matroska/WebM, AVI, FLV, MPEG-TS/PS): a
# file that begins like one but does not open was cut short; one that does not is not a video.
def _looks_like_video(head: bytes) -> bool:
    return (head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip") or head.startswith(b"\x1a\x45\xdf\xa3")
            or (head.startswith(b"RIFF") and head[8:12] == b"AVI ") or head.startswith(b"FLV")
            or head[:1] == b"\x47" or head.startswith(b"\x00\x00\x01\xba"))


def _head(source) -> bytes:
    if isinstance(source, io.BytesIO):
        return source.getvalue()[:16]
    with open(source, "rb") as f:
        return f.read(16)


def _open(uri: str):
    loc = storage.parse_uri(uri)
    if loc.scheme == "file":
        if not Path(loc.path).is_file():
            raise ClipProblem("missing_file", f"{uri}: no such file; fix the path in the manifest or add the clip")
        source = loc.path
    else:
        try:
            source = io.BytesIO(storage.read_bytes(uri))
        except StorageError as err:
            if "no such object" in str(err):
                raise ClipProblem("missing_file", f"{uri}: no such object; fix the path in the manifest or upload the clip") from None
            raise  # endpoint / credentials: a problem of the whole input, not of this clip
    head = _head(source)
    if not head:
        raise ClipProblem("empty_file", f"{uri}: is empty (0 bytes); copy the clip again")
    try:
        return av.open(source, mode="r")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        if _looks_like_video(head):
            raise ClipProblem("truncated", f"{uri}: a video file cut short, it does not open ({_why(err)}); "
                              "copy it again") from None
        raise ClipProblem("not_a_video", f"{uri}: not a video file ({_why(err)}); list mp4 clips (H.264) only") from None


def _why(err: Exception) -> str:
    """FFmpeg's reason without the errno and path PyAV adds."""
    return getattr(err, "strerror", None) or str(err)


def _decode(uri: str, keep_frames: bool) -> tuple[ClipInfo, list[np.ndarray]]:
    frames: list[np.ndarray] = []
    with _open(uri) as container:
        if not container.streams.video:
            raise ClipProblem("no_frames", f"{uri}: has no video stream; re-export the clip with its video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = 0
        try:
            for frame in container.decode(stream):
                count += 1
                if keep_frames:
                    frames.append(frame.to_ndarray(format="rgb24"))
        except (av.FFmpegError, ValueError) as err:
            raise ClipProblem("undecodable", f"{uri}: decoding failed after {count} frames ({_why(err)}); re-encode the clip") from None
        # The header's frame count exceeds what decodes when the file was cut short.
        if stream.frames and count < stream.frames:
            raise ClipProblem(
                "truncated", f"{uri}: only {count} of {stream.frames} frames decode (file cut short); copy it again"
            )
        if count == 0:
            raise ClipProblem("no_frames", f"{uri}: contains no decodable frames; re-export the clip")
        rate = stream.average_rate or stream.guessed_rate
        if rate:
            fps = float(rate)
        elif stream.duration and stream.time_base:
            fps = count / float(stream.duration * stream.time_base)
        else:
            fps = 0.0
        info = ClipInfo(frames=count, fps=fps, width=stream.codec_context.width, height=stream.codec_context.height)
    return info, frames


def probe(uri: str) -> ClipInfo:
    """Decode every frame of the clip at `uri` (path or s3://) and return its measurements.

    Raises `ClipProblem` (a `DataError` with a `.reason`) when the clip is missing, undecodable,
    truncated or empty; `StorageError` when its storage cannot be reached.
    """
    return _decode(uri, keep_frames=False)[0]


def read_frames(uri: str) -> np.ndarray:
    """All frames of the clip at `uri` as uint8 RGB, shape [F, H, W, 3]. Raises like `probe`."""
    return np.stack(_decode(uri, keep_frames=True)[1])


def check_clip(uri: str, *, min_frames: int = 1, min_fps: float = 1.0, min_size: int = 8) -> tuple[ClipInfo | None, tuple[str, str] | None]:
    """(info, None) for a usable clip, or (info or None, (reason, detail)) for one to quarantine."""
    try:
        info = probe(uri)
    except ClipProblem as err:
        return None, (err.reason, str(err))
    if info.frames < min_frames:
        return info, ("too_few_frames", f"{uri}: {info.frames} frames, at least {min_frames} needed; use longer clips or lower min_frames")
    if info.fps < min_fps:
        return info, ("low_fps", f"{uri}: {info.fps:.2f} fps, at least {min_fps:g} needed; re-encode at a higher frame rate or lower min_fps")
    if min(info.width, info.height) < min_size:
        return info, ("too_small", f"{uri}: {info.width}x{info.height}, at least {min_size} px a side needed; use larger clips or lower min_size")
    return info, None
