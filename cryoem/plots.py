"""Figures: projections, volume slices, orientation coverage and isosurfaces.

Every function returns its figure (matplotlib or plotly) and computes nothing
that the rest of the package does not already provide.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

from . import rotations

__all__ = [
    "projection_gallery", "volume_slices", "orientation_coverage", "isosurface", "dp_dq",
    "training_curves", "viewing_directions", "orientation_errors", "recovery_errors",
    "loss_vs_error", "recovery_curves", "common_line_scores", "map_slices", "fsc_curves",
    "volume_rendering", "save",
]


def projection_gallery(images: ArrayLike, titles: Sequence[str] | None = None,
                       columns: int = 6, size: float = 1.8) -> Any:
    """A grid of images (row = y, drawn with y upwards as in the microscope)."""
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * size), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k], cmap="gray", origin="lower")
            if titles is not None:
                ax.set_title(titles[k], fontsize=8)
    fig.tight_layout()
    return fig


def volume_slices(volume: ArrayLike, voxel_size: float = 1.0, title: str = "") -> Any:
    """Central slices and projections of a ``[z, y, x]`` volume along z, y and x."""
    import matplotlib.pyplot as plt

    vol = np.asarray(volume)
    c = vol.shape[0] // 2
    panels = [
        ("slice z = 0", vol[c], "x", "y"), ("slice y = 0", vol[:, c], "x", "z"),
        ("slice x = 0", vol[:, :, c], "y", "z"), ("projection along z", vol.sum(0), "x", "y"),
        ("projection along y", vol.sum(1), "x", "z"), ("projection along x", vol.sum(2), "y", "z"),
    ]
    extent = np.array([-c, vol.shape[0] - c, -c, vol.shape[0] - c]) * voxel_size
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    for ax, (name, image, xlabel, ylabel) in zip(axes.flat, panels):
        ax.imshow(image, cmap="gray", origin="lower", extent=extent)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"{xlabel} (Å)", fontsize=8)
        ax.set_ylabel(f"{ylabel} (Å)", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def orientation_coverage(quaternions: ArrayLike, title: str = "viewing directions") -> Any:
    """Viewing directions on the sphere (Mollweide map of azimuth and elevation)."""
    import matplotlib.pyplot as plt

    d = rotations.viewing_direction(quaternions)
    longitude = np.arctan2(d[:, 1], d[:, 0])
    latitude = np.arcsin(np.clip(d[:, 2], -1, 1))
    fig = plt.figure(figsize=(7, 4))
    ax = fig.add_subplot(111, projection="mollweide")
    ax.scatter(longitude, latitude, s=2, alpha=0.5)
    ax.grid(True)
    ax.set_title(f"{title} ({len(d)} images)")
    return fig


def isosurface(volume: ArrayLike, level: float | None = None, voxel_size: float = 1.0,
               max_size: int = 48) -> Any:
    """An interactive plotly isosurface (the map is binned to at most ``max_size`` voxels)."""
    import plotly.graph_objects as go

    vol = np.asarray(volume, dtype=np.float32)
    step = max(1, int(np.ceil(vol.shape[0] / max_size)))
    if step > 1:
        n = vol.shape[0] // step * step
        vol = vol[:n, :n, :n].reshape(n // step, step, n // step, step, n // step, step).mean(
            axis=(1, 3, 5))
    level = float(level if level is not None else vol.max() * 0.3)
    axis = (np.arange(vol.shape[0]) - vol.shape[0] // 2) * voxel_size * step
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    surface = go.Isosurface(x=x.ravel(), y=y.ravel(), z=z.ravel(), value=vol.ravel(),
                            isomin=level, isomax=float(vol.max()), surface_count=1,
                            caps=dict(x_show=False, y_show=False, z_show=False),
                            colorscale="Blues", showscale=False)
    figure = go.Figure(surface)
    figure.update_layout(scene=dict(xaxis_title="x (Å)", yaxis_title="y (Å)",
                                    zaxis_title="z (Å)", aspectmode="cube"),
                         margin=dict(l=0, r=0, t=30, b=0))
    return figure


def dp_dq(true: ArrayLike, estimated: ArrayLike, title: str = "", max_points: int = 20000,
          seed: int = 0) -> Any:
    """The paper's dP/dQ figure: estimated vs true distance, as a scatter and a density.

    Matrices are reduced to their pairs ``i < j``; at most ``max_points`` pairs
    are drawn in the scatter (all of them enter the density).
    """
    import matplotlib.pyplot as plt

    from .distance import upper_triangle

    d_true, d_est = np.asarray(true), np.asarray(estimated)
    if d_true.ndim == 2:
        d_true, d_est = upper_triangle(d_true), upper_triangle(d_est)
    shown = np.random.default_rng(seed).permutation(len(d_true))[:max_points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    left.scatter(d_true[shown], d_est[shown], s=1, alpha=0.2)
    right.hist2d(d_true, d_est, bins=60, range=[[0, np.pi], [0, np.pi]], cmap="viridis")
    for ax in (left, right):
        ax.plot([0, np.pi], [0, np.pi], "r--", lw=1)
        ax.set_xlim(0, np.pi)
        ax.set_ylim(0, np.pi)
        ax.set_xlabel("true distance $d_q$ (rad)")
        ax.set_ylabel("estimated distance $d_p$ (rad)")
        ax.set_aspect("equal")
    left.set_title("pairs")
    right.set_title("density")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_curves(history: dict[str, Sequence[float]], title: str = "training") -> Any:
    """Training and validation loss (L_DE, rad²) per epoch, on a log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "val_loss"):
        if key in history:
            values = history[key]
            ax.plot(np.arange(1, len(values) + 1), values,
                    label="validation" if key.startswith("val") else "training")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("$L_{DE}$ (rad²)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def refinement_history(history: Sequence[dict[str, float]], title: str = "refinement") -> Any:
    """Half-map FSC 0.143 resolution and mean orientation change per refinement iteration."""
    import matplotlib.pyplot as plt

    steps = [entry["iteration"] for entry in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.plot(steps, [entry.get("halfmap_fsc0143_angstrom", np.nan) for entry in history], "o-")
    left.set_ylabel("half maps, FSC 0.143 (Å)")
    right.semilogy(steps, [max(entry["mean_change_rad"], 1e-6) for entry in history], "o-")
    right.set_ylabel("mean orientation change (rad)")
    for ax in (left, right):
        ax.set_xlabel("iteration")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save(figure: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure (PNG/PDF/SVG) or a plotly figure (self-contained HTML) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(figure, "write_html"):
        figure.write_html(path, include_plotlyjs=True)  # embedded: works offline
        return path
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------
# Orientation recovery (Phase 2)
# ----------------------------------------------------------------------------


def viewing_directions(estimated: ArrayLike, true: ArrayLike, title: str = "",
                       max_points: int = 500, seed: int = 0) -> Any:
    """Estimated vs true viewing directions on a Mollweide map, one segment per projection.

    ``true`` should already be in the estimate's frame (``Alignment.apply(true)``).
    Estimated directions are coloured by their angle to the true one (degrees);
    grey segments join each pair (pairs that straddle the map's edge are not
    joined).  At most ``max_points`` projections are drawn.  Two axes: the
    map and its colour bar.
    """
    import matplotlib.pyplot as plt

    est = rotations.viewing_direction(estimated)
    ref = rotations.viewing_direction(true)
    shown = np.random.default_rng(seed).permutation(len(est))[:max_points]
    est, ref = est[shown], ref[shown]
    angle = np.degrees(np.arccos(np.clip(np.sum(est * ref, axis=1), -1, 1)))

    def lon_lat(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.arctan2(d[:, 1], d[:, 0]), np.arcsin(np.clip(d[:, 2], -1, 1))

    (lon_e, lat_e), (lon_t, lat_t) = lon_lat(est), lon_lat(ref)
    fig = plt.figure(figsize=(8, 4.5))
    ax = fig.add_subplot(111, projection="mollweide")
    joined = np.abs(lon_e - lon_t) < np.pi / 2
    for k in np.flatnonzero(joined):
        ax.plot([lon_t[k], lon_e[k]], [lat_t[k], lat_e[k]], color="0.6", lw=0.5, zorder=1)
    ax.scatter(lon_t, lat_t, s=14, facecolors="none", edgecolors="k", linewidths=0.5,
               label="true (aligned)", zorder=2)
    points = ax.scatter(lon_e, lat_e, c=angle, s=8, cmap="viridis", vmin=0, vmax=180,
                        label="estimated", zorder=3)
    fig.colorbar(points, ax=ax, shrink=0.7, label="viewing-direction error (°)")
    ax.grid(True)
    ax.tick_params(labelsize=7)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(f"{title} — median {np.median(angle):.1f}°" if title
                 else f"median {np.median(angle):.1f}°", fontsize=10, pad=14)
    return fig


def orientation_errors(alignments: Any, bins: int = 18, title: str = "") -> Any:
    """Histograms of the per-projection errors of one or several alignments (one axes).

    ``alignments`` is a :class:`cryoem.alignment.Alignment` or a mapping
    ``label → Alignment``; counts come from :meth:`Alignment.histogram`
    (on ``[0, π]``), drawn as fractions of the projections, with each mean
    as a dashed vertical line.
    """
    import matplotlib.pyplot as plt

    from collections.abc import Mapping

    named = alignments if isinstance(alignments, Mapping) else {"": alignments}
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (label, alignment) in enumerate(named.items()):
        counts, edges = alignment.histogram(bins)
        color = f"C{k}"
        ax.stairs(counts / max(counts.sum(), 1), edges, color=color, lw=1.5,
                  label=f"{label or alignment.metric}: mean {alignment.mean:.3f} rad")
        ax.axvline(alignment.mean, color=color, ls="--", lw=1)
    ax.set_xlim(0, np.pi)
    ax.set_xlabel("per-projection error $e_i$ (rad)")
    ax.set_ylabel("fraction of projections")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def recovery_errors(table: Any, reference: float | None = None,
                    title: str = "E_OR by estimator and metric") -> Any:
    """Grouped bars: ``table[estimator][metric]`` = mean error (rad); one axes.

    ``reference`` (e.g. :data:`cryoem.alignment.RANDOM_MEAN_ERROR`) is drawn
    as a dashed horizontal line.
    """
    import matplotlib.pyplot as plt

    estimators = list(table)
    metrics = list(dict.fromkeys(m for row in table.values() for m in row))
    width = 0.8 / max(len(metrics), 1)
    x = np.arange(len(estimators))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(estimators) + 2), 4))
    for k, metric in enumerate(metrics):
        values = [table[e].get(metric, np.nan) for e in estimators]
        bars = ax.bar(x + (k - (len(metrics) - 1) / 2) * width, values, width, label=metric)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label=f"random ({reference:.2f} rad)")
    ax.set_xticks(x, estimators, rotation=20, ha="right")
    ax.set_ylabel("$E_{OR}$ (rad)")
    ax.set_ylim(0, np.pi)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loss_vs_error(losses: Sequence[float], errors: Sequence[float],
                  labels: Sequence[str] | None = None, title: str = "",
                  xlabel: str = "$L_{OR}$ (rad²)", ylabel: str = "$E_{OR}$ (rad)") -> Any:
    """Scatter of the final loss against the error, one point per run (optionally labelled)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(losses, errors, s=30)
    for k, label in enumerate(labels or []):
        ax.annotate(label, (losses[k], errors[k]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def recovery_curves(histories: Any, title: str = "recovery") -> Any:
    """L_OR (rad², log scale) per gradient step for one or several runs; one axes.

    ``histories`` is a sequence of losses or a mapping ``label → sequence``
    (e.g. ``[result.initial_loss, *result.loss_history]``: step 0 is the
    initialisation).
    """
    import matplotlib.pyplot as plt

    from collections.abc import Mapping

    named = histories if isinstance(histories, Mapping) else {"": histories}
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in named.items():
        values = np.asarray(values, dtype=np.float64)
        ax.plot(np.arange(len(values)), values, label=label or None)
    ax.set_yscale("log")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("$L_{OR}$ (rad²)")
    ax.set_title(title)
    if any(named):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def common_line_scores(angles: ArrayLike, curves: Any, samples: Any = None,
                       best: float | None = None, marks: Any = None, title: str = "") -> Any:
    """Common-line scores of candidate frames (:func:`cryoem.commonlines.score_candidates`).

    Left axes: ``curves[label]``, the scores of a one-parameter family of
    candidates at ``angles`` (radians, drawn in degrees), e.g. ``R_z(t)·C``
    around a chosen ``C``.  ``marks`` maps a label to an ``(angle, score)``
    point to annotate (the choice, its handedness twin).  Right axes, only
    when ``samples`` is given: histograms of ``samples[label]``, the scores of
    random candidates (e.g. one per branch).  ``best`` (the chosen frame's
    score) is drawn as a dashed line on both.
    """
    import matplotlib.pyplot as plt

    degrees = np.degrees(np.asarray(angles, dtype=np.float64))
    panels = 2 if samples else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    for label, values in curves.items():
        ax.plot(degrees, np.asarray(values, dtype=np.float64), label=label)
    for label, (angle, value) in (marks or {}).items():
        ax.plot([np.degrees(angle)], [value], "o", color="k", ms=5)
        ax.annotate(label, (np.degrees(angle), value), fontsize=8, xytext=(4, -12),
                    textcoords="offset points")
    if best is not None:
        ax.axhline(best, color="k", ls="--", lw=1, label=f"chosen ({best:.3f})")
    ax.set_xlabel("angle t (degrees)")
    ax.set_ylabel("mean common-line correlation")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    if samples:
        ax = axes[0, 1]
        for label, values in samples.items():
            ax.hist(np.asarray(values, dtype=np.float64), bins=30, alpha=0.6, label=label)
        if best is not None:
            ax.axvline(best, color="k", ls="--", lw=1, label="chosen")
        ax.set_xlabel("mean common-line correlation")
        ax.set_ylabel("random candidates")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------
# Reconstruction (Phase 3)
# ----------------------------------------------------------------------------


def map_slices(maps: Any, voxel_size: float = 1.0, title: str = "", size: float = 2.2) -> Any:
    """Central slices of several ``[z, y, x]`` maps side by side: one row per map, one column per axis.

    ``maps`` is a mapping ``label → (L, L, L) array`` (or a sequence of arrays).
    Each map gets its own grey scale (its minimum to its maximum), so maps of
    different scales stay comparable by shape.  Columns: the slices ``z = 0``,
    ``y = 0`` and ``x = 0`` through the box centre (index ``L // 2``).
    """
    import matplotlib.pyplot as plt

    from collections.abc import Mapping

    named = dict(maps) if isinstance(maps, Mapping) else {f"map {k}": m for k, m in enumerate(maps)}
    fig, axes = plt.subplots(len(named), 3, figsize=(3 * size, len(named) * size), squeeze=False)
    for row, (label, volume) in enumerate(named.items()):
        vol = np.asarray(volume, dtype=np.float32)
        c = vol.shape[0] // 2
        extent = np.array([-c, vol.shape[0] - c, -c, vol.shape[0] - c]) * voxel_size
        panels = [("z = 0", vol[c], "x", "y"), ("y = 0", vol[:, c], "x", "z"),
                  ("x = 0", vol[:, :, c], "y", "z")]
        low, high = float(vol.min()), float(vol.max())
        for column, (name, image, xlabel, ylabel) in enumerate(panels):
            ax = axes[row, column]
            ax.imshow(image, cmap="gray", origin="lower", extent=extent, vmin=low,
                      vmax=high if high > low else low + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(xlabel, fontsize=7, labelpad=1)
            ax.set_ylabel(ylabel, fontsize=7, labelpad=1)
            if row == 0:
                ax.set_title(f"slice {name}", fontsize=9)
        axes[row, 0].annotate(label, xy=(0, 0.5), xycoords="axes fraction", xytext=(-18, 0),
                              textcoords="offset points", ha="right", va="center", fontsize=9,
                              rotation=90)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def fsc_curves(curves: Any, thresholds: Sequence[float] | float = (0.5,), title: str = "") -> Any:
    """FSC curves of one or several maps on one axes, against spatial frequency (1/Å).

    ``curves`` is a :class:`cryoem.resolution.FSC` or a mapping ``label → FSC``.
    Each threshold is a dashed horizontal line; each legend entry gives the
    curve's resolution (:meth:`FSC.resolution`) at the first threshold
    ("> L·px" when the curve starts below it, Nyquist when it never drops
    below).  A dotted vertical line marks Nyquist (``1 / (2 × pixel size)``)
    of the first curve; the top axis reads the frequency as a resolution in Å.
    """
    import matplotlib.pyplot as plt

    from collections.abc import Mapping

    named = dict(curves) if isinstance(curves, Mapping) else {"": curves}
    levels = [float(thresholds)] if np.isscalar(thresholds) else [float(t) for t in thresholds]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (label, curve) in enumerate(named.items()):
        text = label
        if levels:
            value = curve.resolution(levels[0])
            shown = f"{value:.2f} Å" if np.isfinite(value) \
                else f"> {curve.size * curve.pixel_size:.0f} Å"
            text = f"{label}: {shown}" if label else shown
        ax.plot(curve.frequencies, curve.values, color=f"C{k}", lw=1.5, label=text)
    for level in levels:
        ax.axhline(level, color="k", ls="--", lw=0.8)
        ax.annotate(f"{level:g}", xy=(1, level), xycoords=("axes fraction", "data"),
                    xytext=(-3, 2), textcoords="offset points", fontsize=7, ha="right")
    if named:
        first = next(iter(named.values()))
        nyquist = 1.0 / (2 * first.pixel_size)
        ax.axvline(nyquist, color="0.5", ls=":", lw=1)
        ax.set_xlim(0, nyquist * 1.02)

        top = ax.secondary_xaxis("top")
        ticks = nyquist * np.array([0.25, 0.5, 0.75, 1.0])
        top.set_xticks(ticks, [f"{1 / f:.3g}" for f in ticks])
        top.set_xlabel("resolution (Å)", fontsize=8)
        top.tick_params(labelsize=7)
    ax.set_ylim(min(-0.05, min((float(np.min(c.values)) for c in named.values()), default=0) - 0.05),
                1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("Fourier shell correlation")
    ax.grid(True, alpha=0.3)
    if any(named) or levels:
        ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, pad=24)
    fig.tight_layout()
    return fig




def volume_rendering(volume: ArrayLike, voxel_size: float = 1.0,
                     level: float | None = None) -> Any:
    """An ipyvolume volume rendering for live notebooks (optional extra ``volume-rendering``).

    ipyvolume's widgets load their JavaScript from a CDN, so the published site
    uses :func:`isosurface` (plotly, works from the files alone) instead.
    """
    try:
        import ipyvolume
    except ImportError as error:
        raise ImportError("volume rendering needs ipyvolume: pip install -e "
                          "\".[volume-rendering]\" (ipyvolume with ipython_genutils and six, "
                          "which it imports without declaring them)") from error
    data = np.asarray(volume, dtype=np.float32)
    extent = np.array([-0.5, 0.5]) * data.shape[0] * voxel_size
    figure = ipyvolume.figure()
    ipyvolume.volshow(data, level=[level if level is not None else 0.3 * float(data.max())],
                      extent=[extent] * 3)
    return figure
