"""Loader options: the one place their defaults live (the trainer's config and the command line fill them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.params import FOREGROUND_THRESHOLD

BACKGROUNDS = ("plate", "frames")
MASK_MODES = ("soft", "threshold", "area")
KEY_STARTS = ("auto", "any", "cached", "same")
ON_DAMAGE = ("skip", "stop")
QUERY_CROPS = ("random", "mover")


BLUR_REFERENCE_CROP = 224  # the crop size `blur_sigma` is given at

# Options added after runs were first saved, with what the loader did before each existed: a saved run's options
# that lack one (an older config.json or checkpoint) read as the run was trained, not as today's default.
BEFORE_ADDED: dict[str, Any] = {
    "own_floor": 0.0,
    "key_start": "cached",
    "key_merge": False,
    "own_margin": 0.0,
    "query_crop": "random",
}


@dataclass(frozen=True)
class LoaderParams:
    crop: int = 112  # output H = W of both views
    crop_scale: tuple[float, float] = (0.2, 1.0)  # area fraction of the random resized crop (MoCo v2)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # Where the query's crop lies: anywhere ("random", MoCo's rule), or centred on its clip's moving foreground
    # ("mover": the mask's mass, so a small mover fills more of the view and keeps its margin of own scene in it),
    # with its own area range (None: crop_scale). Unmerged queries (plain MoCo) crop anywhere.
    query_crop: str = "mover"
    query_crop_scale: tuple[float, float] | None = None
    # Probability that the query view is a FAME view: 1.0 as in the original code (Mark12Ding/FAME, train.py),
    # which merges every query; lower values keep some queries plain.
    fame_p: float = 1.0
    background: str = "plate"  # partner plate, or the partner's raw frames (the paper's mode)
    # How the cached soft mask becomes the query's alpha, inside the query's crop: soft alpha, a fixed threshold, or
    # the paper's rule (the top `beta` of the crop's pixels); see `pipeline.loader.query_mask`.
    mask_mode: str = "threshold"
    threshold: int = FOREGROUND_THRESHOLD  # on the 0..255 mask scale, for mask_mode="threshold"
    beta: float = 0.5  # own-pixel fraction of the crop, for mask_mode="area"
    own_floor: float = 0.3  # every merged frame keeps at least this fraction of its crop from its own clip (0: off)
    # ... and at least its mask's share of the crop plus this fraction (0: off): the mover and some of its own scene
    # around it, more for a large mover than for a small one. Not with mask_mode="area", whose share is beta.
    own_margin: float = 0.3
    # Where the key clip starts: anywhere in the video ("any", drawn per epoch: more temporal variety, the key needs
    # no mask), at another of the cache's clip positions ("cached"), or on the query's own clip ("same": the same
    # frames, so the two views share the mover's exact path and differ in crop, flip, colours and background).
    # "auto": "same" when queries are merged (fame_p > 0), "any" for plain MoCo, whose views are two clips.
    key_start: str = "auto"
    # The key merged too when it starts on the query's own clip (`resolved_key_start` "same") and the query is
    # merged: its alpha is the query clip's cached mask inside the key's crop, its own foreground over the plate (or
    # frames) of its partner's partner, another video than the query's background. Both views then share the mover
    # and its path, and neither shares a background with the other. Ignored for keys from other clips.
    key_merge: bool = True
    # A damaged cache clip or a video that no longer decodes: left out, another sample standing in, and counted
    # ("skip"), or the end of the run ("stop").
    on_damage: str = "skip"
    use_cache: bool = True  # False: compute `fame` masks per sample from the decoded clip, like the original code
    augment: bool = True  # MoCo v2 colour jitter, grayscale, blur (flip always follows the crop)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    # Blur sigma in px of a BLUR_REFERENCE_CROP-px crop (MoCo v2's 0.1-2.0 at 224), scaled to `crop`: unscaled, a
    # sigma of 2 on a 40-px crop wipes out a small mover.
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    return_partner: bool = False  # also output an augmented view of the partner clip (semi-negatives)
    return_background: bool = False  # also output the query's background alone, augmented as the query is
    num_workers: int = 2  # parallel external-source processes (decoding)
    num_threads: int = 2  # DALI operator threads
    prefetch: int = 2  # batches prepared ahead
    clip_len: int | None = None  # expected cache clip length (refused when different); None: whatever it is
    size: tuple[int, int] | None = None  # expected cache frame size

    def __post_init__(self) -> None:
        if self.crop < 8:
            raise ValueError(f"crop must be >= 8, got {self.crop}")
        if not 0.0 <= self.fame_p <= 1.0:
            raise ValueError(f"fame_p must be in [0, 1], got {self.fame_p}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {', '.join(MASK_MODES)}, got {self.mask_mode!r}")
        if not 0.0 < self.beta < 1.0:
            raise ValueError(f"beta must be in (0, 1), got {self.beta}")
        if not 0.0 <= self.own_floor < 1.0:
            raise ValueError(f"own_floor must be in [0, 1), got {self.own_floor}")
        if not 0.0 <= self.own_margin < 1.0:
            raise ValueError(f"own_margin must be in [0, 1), got {self.own_margin}")
        if self.key_start not in KEY_STARTS:
            raise ValueError(f"key_start must be one of {', '.join(KEY_STARTS)}, got {self.key_start!r}")
        if self.query_crop not in QUERY_CROPS:
            raise ValueError(f"query_crop must be one of {', '.join(QUERY_CROPS)}, got {self.query_crop!r}")
        if self.query_crop_scale is not None and not 0 < self.query_crop_scale[0] <= self.query_crop_scale[1] <= 1:
            raise ValueError(f"query_crop_scale must be 0 < low <= high <= 1, got {self.query_crop_scale}")
        if self.on_damage not in ON_DAMAGE:
            raise ValueError(f"on_damage must be one of {', '.join(ON_DAMAGE)}, got {self.on_damage!r}")
        if not 0 <= self.threshold <= 255:
            raise ValueError(f"threshold must be in [0, 255], got {self.threshold}")
        if self.num_workers < 0 or self.prefetch < 1:
            raise ValueError("num_workers must be >= 0 and prefetch >= 1")

    @property
    def resolved_key_start(self) -> str:
        """Where keys start in fact: `key_start`, with "auto" made "same" for FAME and "any" for plain MoCo."""
        if self.key_start != "auto":
            return self.key_start
        return "same" if self.fame_p > 0 else "any"

    @property
    def merges_key(self) -> bool:
        """Whether merged samples merge their key too: `key_merge`, for keys on the query's own clip."""
        return self.key_merge and self.fame_p > 0 and self.resolved_key_start == "same"

    @property
    def extra_views(self) -> tuple[str, ...]:
        """Names of the views output after query and key, in the graph's order: the partner's, the background's."""
        return tuple(
            name for name, on in (("partner", self.return_partner), ("background", self.return_background)) if on
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderParams:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**kwargs)
