"""The diverging colour scale of key-token values: red for blamed tokens, blue for credited ones.

Values in (-top, top) fall into ``2 * steps + 1`` buckets; bucket 0 (|v| < top / (2 * steps))
is left uncoloured so that weakly weighted text reads as plain text. Colours come from
ColorBrewer's RdBu scale (readable by most colour-blind readers), interpolated as matplotlib's
"RdBu" colormap does it, its red half for negative values and its blue half for positive ones;
each bucket's text colour is the one of black or white with the higher contrast.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# ColorBrewer's 11-class RdBu, red to blue: the anchors of matplotlib's "RdBu".
_RDBU = (
    *("#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7"),  # reds
    "#f7f7f7",
    *("#d1e5f0", "#92c5de", "#4393c3", "#2166ac", "#053061"),  # blues
)
_LEVELS = 256  # matplotlib's colormaps are tables of 256 colours


def rdbu(x: float) -> str:
    """The colour ("#rrggbb") at x in [0, 1] of the RdBu scale (red at 0, neutral at 0.5, blue at 1),
    the one matplotlib's ``to_hex(colormaps["RdBu"](x))`` gives."""
    level = min(max(int(x * _LEVELS), 0), _LEVELS - 1)
    position = level / (_LEVELS - 1) * (len(_RDBU) - 1)
    low = min(int(position), len(_RDBU) - 2)
    start, end = _rgb(_RDBU[low]) / 255, _rgb(_RDBU[low + 1]) / 255
    colour = start + (position - low) * (end - start)
    return "#" + "".join(f"{round(channel * 255):02x}" for channel in colour)


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


def relative_luminance(hex_colour: str) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""
    channels = _rgb(hex_colour) / 255.0
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(first: str, second: str) -> float:
    """WCAG 2 contrast ratio of two colours (1 to 21)."""
    high, low = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@dataclasses.dataclass(frozen=True)
class DivergingScale:
    """Buckets and colours of key-token values v in (-top, top).

    top: the bound of |v| (KTAEConfig.top); steps: buckets on each side of 0.
    """

    top: float = 1.0
    steps: int = 10

    def __post_init__(self) -> None:
        if not self.top > 0:
            raise ValueError(f"DivergingScale.top must be > 0, got {self.top}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"DivergingScale.steps must be a positive int, got {self.steps!r}")

    def buckets(self, values) -> np.ndarray:
        """Bucket of each value: int8 in [-steps, steps], nearest multiple of top / steps, saturating."""
        scaled = np.asarray(values, dtype=np.float64) / self.top * self.steps
        if not np.all(np.isfinite(scaled)):
            raise ValueError("key-token values must be finite")
        return np.clip(np.rint(scaled), -self.steps, self.steps).astype(np.int8)

    def background(self, bucket: int) -> str | None:
        """Background colour of a bucket ("#rrggbb"); None for bucket 0 (uncoloured)."""
        if not -self.steps <= bucket <= self.steps:
            raise ValueError(f"bucket {bucket} outside [-{self.steps}, {self.steps}]")
        if bucket == 0:
            return None
        return rdbu(0.5 + 0.5 * bucket / self.steps)

    def foreground(self, bucket: int) -> str:
        """Text colour on a bucket's background: black or white, whichever contrasts more."""
        background = self.background(bucket) or "#ffffff"
        return max(("#111111", "#ffffff"), key=lambda text: contrast_ratio(text, background))

    @staticmethod
    def css_class(bucket: int) -> str:
        """CSS class of a bucket: 'n3' for -3, 'p3' for +3, '' for 0 (the report's JS mirrors this)."""
        return f"n{-bucket}" if bucket < 0 else f"p{bucket}" if bucket > 0 else ""

    def css(self) -> str:
        """One CSS rule per coloured bucket."""
        rules = []
        for bucket in range(-self.steps, self.steps + 1):
            if bucket:
                rules.append(
                    f".{self.css_class(bucket)}{{background:{self.background(bucket)};color:{self.foreground(bucket)}}}"
                )
        return "\n".join(rules)

    def legend(self) -> list[tuple[float, str | None]]:
        """(bucket centre value, background) from -top to +top, for the report's legend."""
        return [(self.top * b / self.steps, self.background(b)) for b in range(-self.steps, self.steps + 1)]
