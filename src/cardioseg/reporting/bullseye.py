"""AHA 16-segment bull's-eye plots (wall thickness, thickening) with matplotlib."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: Where each AHA segment sits on the plot: (ring, start angle in degrees, width), the angle
#: counter-clockwise from the right (0°). The conventional layout: anterior at
#: the top, septum on the left, lateral on the right, inferior at the bottom; base outside.
_RINGS = {"basal": (2.0, 3.0), "mid": (1.0, 2.0), "apical": (0.0, 1.0)}
_SECTORS: dict[int, tuple[str, float, float]] = {
    **{
        first + k: (level, start, 60.0)
        for level, first in (("basal", 1), ("mid", 7))
        for k, start in enumerate((60.0, 120.0, 180.0, 240.0, 300.0, 0.0))
    },
    13: ("apical", 45.0, 90.0),
    14: ("apical", 135.0, 90.0),
    15: ("apical", 225.0, 90.0),
    16: ("apical", 315.0, 90.0),
}


def plot_bullseye(
    ax: Any,
    values: Mapping[int, float | None],
    title: str = "",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    fmt: str = "{:.1f}",
    highlight: int | None = None,
) -> Any:
    """Draw the AHA 16-segment bull's-eye of ``values`` on ``ax``.

    The segments are annular wedges (``matplotlib.patches.Wedge``) centred on the origin of
    an ordinary axes with equal aspect (quicker to draw than bars on polar axes).

    Args:
        ax: A matplotlib axes (Cartesian; it is given equal aspect and no axis lines).
        values: Value per segment number (1–16); ``None`` or missing segments are grey.
        title: Axes title.
        cmap: Colour map name.
        vmin: Lower end of the colour scale (default: smallest value).
        vmax: Upper end of the colour scale (default: largest value).
        fmt: Format of the number written in each segment.
        highlight: A segment outlined in red (e.g. the thickest point).

    Returns:
        The ``ScalarMappable`` of the colours, for a colour bar.

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> fig, ax = plt.subplots()
        >>> _ = plot_bullseye(ax, {s: float(s) for s in range(1, 17)}, "thickness (mm)")
        >>> len(ax.patches)
        16
        >>> plt.close(fig)
    """
    import matplotlib as mpl
    from matplotlib.patches import Wedge

    if getattr(ax, "name", "rectilinear") == "polar":
        raise ValueError("plot_bullseye draws on ordinary (Cartesian) axes, not polar ones")

    known = [float(v) for v in values.values() if v is not None and np.isfinite(float(v))]
    lo = vmin if vmin is not None else (min(known) if known else 0.0)
    hi = vmax if vmax is not None else (max(known) if known else 1.0)
    norm = mpl.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    colours = mpl.colormaps[cmap]
    for seg, (level, start, width) in _SECTORS.items():
        inner, outer = _RINGS[level]
        value = values.get(seg)
        ok = value is not None and np.isfinite(float(value))
        colour = colours(norm(float(value))) if ok else (0.85, 0.85, 0.85, 1.0)
        ax.add_patch(
            Wedge(
                (0.0, 0.0),
                outer,
                start,
                start + width,
                width=outer - inner,
                facecolor=colour,
                edgecolor="red" if seg == highlight else "white",
                linewidth=2.5 if seg == highlight else 1.0,
                zorder=3 if seg == highlight else 2,
            )
        )
        r = (inner + outer) / 2 if level != "apical" else 0.6
        theta = np.radians(start + width / 2)
        text = fmt.format(float(value)) if ok else "–"
        light = ok and float(np.mean(colour[:3])) < 0.5
        ax.text(
            r * np.cos(theta),
            r * np.sin(theta),
            text,
            ha="center",
            va="center",
            fontsize=7,
            zorder=4,
            color="white" if light else "black",
        )
    ax.set_xlim(-3.75, 3.75)
    ax.set_ylim(-3.75, 3.75)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    for label, theta, turn in (
        ("anterior", 90, 0),
        ("septal", 180, 90),
        ("inferior", 270, 0),
        ("lateral", 0, 270),
    ):
        ax.text(
            3.4 * np.cos(np.radians(theta)),
            3.4 * np.sin(np.radians(theta)),
            label,
            ha="center",
            va="center",
            fontsize=7,
            color="#555",
            rotation=turn,
        )
    return mpl.cm.ScalarMappable(norm=norm, cmap=colours)
