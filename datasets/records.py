"""What flows between ingest, pairing and shard building: plain, immutable records."""

from __future__ import annotations

from dataclasses import dataclass, field

CATEGORIES = ("concept", "style", "motion", "camera")
# A condition whose category is not labelled, mapped (categories.json) or inferable from its name:
# its clips are kept (pairing needs only the condition) and reported under this category.
UNCATEGORIZED = "uncategorized"


@dataclass(frozen=True)
class Clip:
    """One validated video clip with its labels."""

    id: str  # stable: derived from the clip's path relative to the dataset root
    uri: str  # path or s3:// URI of the mp4
    caption: str
    condition: str  # semantic condition label (VAP-Data's `kind`)
    category: str  # one of CATEGORIES, or UNCATEGORIZED
    split: str = "train"
    alignment_score: float | None = None
    refs: tuple[str, ...] = ()  # ids of clips listed as references (VAP-Data `ref_video_paths`)


@dataclass(frozen=True)
class Rejected:
    """A clip or row that failed validation: kept in the quarantine report, never dropped silently."""

    source: str  # the file or `manifest.csv:row 12`
    reason: str  # short code counted in summaries, e.g. "undecodable", "too_few_frames", "missing_caption"
    detail: str  # one line naming the input and the fix


@dataclass(frozen=True)
class Pair:
    """A reference/target pair sharing one condition (never a clip with itself)."""

    target: Clip
    reference: Clip
    split: str
    # what training draws the reference from, afresh each epoch (the reference first); () = it alone
    candidates: tuple[Clip, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.target.id}<-{self.reference.id}"

    @property
    def references(self) -> tuple[Clip, ...]:
        return self.candidates or (self.reference,)


@dataclass
class IngestResult:
    clips: list[Clip] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rejected:
            counts[r.reason] = counts.get(r.reason, 0) + 1
        return dict(sorted(counts.items()))


@dataclass(frozen=True)
class ClipInfo:
    """What decoding a clip found: the numbers validation checks and preprocessing resamples from."""

    frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        """Seconds of video (frames / fps)."""
        return self.frames / self.fps if self.fps else 0.0
