"""Figures: heatmaps of calibration × test matrices (ID cells boxed, significance starred) and radar charts like
the research's (one polygon per configuration or calibration set; a grouped bar chart below three axes, where a
radar has no area)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from qgen.analysis.matrix import Matrix
from qgen.analysis.tables import digits_for
from qgen.analysis.tidy import FP_LABEL

DPI = 130


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _wrap(label: str, width: int = 16) -> str:
    """Break a long label after a separator (/, -, _) where possible, else at `width` characters."""
    if len(label) <= width:
        return label
    cut = max(label.rfind(sep, 0, width) for sep in "/-_") + 1 or width
    return label[:cut] + "\n" + _wrap(label[cut:], width)


def _items_note(m: Matrix) -> str:
    """The items behind the panel's cells: one number when every cell has the same, else the range."""
    counts = [] if m.n_items is None else [v for v in m.n_items.to_numpy(dtype=float).ravel() if np.isfinite(v)]
    if not counts:
        return ""
    low, high = min(counts), max(counts)
    return f"\nn_items={low:g}" if low == high else f"\nn_items={low:g}–{high:g}"


def heatmaps(matrices: list[Matrix], path: Path, title: str) -> Path:
    """One panel per matrix (setting) of a family, sharing nothing but the figure."""
    n = len(matrices)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    cw = max(m.mean.shape[1] for m in matrices)
    ch = max(m.mean.shape[0] for m in matrices)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * (1.6 + 1.25 * cw), nrows * (1.4 + 0.75 * ch)),
                             squeeze=False)
    for ax, m in zip(axes.flat, matrices):
        data = m.mean.to_numpy(dtype=float)
        cmap = "viridis" if m.higher_better else "viridis_r"
        finite = data[np.isfinite(data)]
        vmin, vmax = (finite.min(), finite.max()) if finite.size else (0, 1)
        if vmin == vmax:
            vmin, vmax = vmin - 0.5 * (abs(vmin) or 1) * 0.01, vmax + 0.5 * (abs(vmax) or 1) * 0.01
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        norm = im.norm
        for i, calib in enumerate(m.mean.index):
            for j, test in enumerate(m.mean.columns):
                v = data[i, j]
                if not np.isfinite(v):
                    ax.text(j, i, "–", ha="center", va="center", fontsize=9, color="gray")
                    continue
                std, d = m.std.loc[calib, test], digits_for(m.metric)
                text = f"{v:.{d}f}" + ("" if not np.isfinite(std) else f"\n±{std:.{d}f}")
                if (calib, test) in m.sig:
                    text += " *"
                rgba = im.cmap(norm(v))
                color = "black" if (0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]) > 0.5 else "white"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
                if calib == test:  # inset so neighbouring cells keep their own edges
                    ax.add_patch(Rectangle((j - 0.44, i - 0.44), 0.88, 0.88, fill=False, edgecolor="red",
                                           linewidth=2.5))
        ax.set_xticks(range(data.shape[1]), [_wrap(("ID: " if t == m.in_distribution else "") + t)
                                             for t in m.mean.columns], rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(data.shape[0]), [_wrap(c) for c in m.mean.index], fontsize=8)
        ax.set_xlabel("test set", fontsize=8)
        ax.set_ylabel("calibration set", fontsize=8)
        s = m.setting
        ax.set_title(f"{s['quantizer']} {s['bits']} (n={s['n_samples']}, len={s['seq_len']}){_items_note(m)}",
                     fontsize=9)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.set_label(m.metric, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{title}\nred box: in-distribution cell (calibration = test); *: ID differs significantly from "
                 f"the best OOD calibration", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def radar(axis_labels: list[str], series: dict[str, list[float]], path: Path, title: str, unit: str,
          reference: float | None = None, legend_title: str | None = None) -> Path:
    """A radar chart (≥ 3 axes) or grouped bars (fewer): one polygon / bar group per series."""
    k = len(axis_labels)
    colors = plt.get_cmap("tab10").colors
    if k < 3:
        fig, ax = plt.subplots(figsize=(max(4.5, 1.2 + 0.5 * k * len(series)), 3.8))
        width = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series.items()):
            x = np.arange(k) + (i - (len(series) - 1) / 2) * width
            ax.bar(x, values, width, label=name, color=colors[i % 10])
        if reference is not None:
            ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=FP_LABEL)
        ax.set_xticks(range(k), axis_labels, fontsize=9)
        ax.set_ylabel(unit, fontsize=9)
        finite = [v for vals in series.values() for v in vals if np.isfinite(v)]
        if finite:
            lo, hi = min(finite + ([reference] if reference else [])), max(finite + ([reference] if reference else []))
            pad = 0.15 * (hi - lo or abs(hi) or 1)
            ax.set_ylim(0 if lo >= 0 else lo - pad, hi + pad)
    else:
        angles = np.linspace(0, 2 * np.pi, k, endpoint=False).tolist()
        fig, ax = plt.subplots(figsize=(6.2, 5.6), subplot_kw={"polar": True})
        styles = ["-", "--", ":", "-."]
        for i, (name, values) in enumerate(series.items()):
            vals = list(values) + [values[0]]
            # distinct dashes and markers keep coinciding series (e.g. a data-free method) all visible
            ax.plot(angles + angles[:1], vals, color=colors[i % 10], linewidth=1.8, label=name,
                    linestyle=styles[i % len(styles)], marker="os^Dv"[i % 5], markersize=4)
            ax.fill(angles + angles[:1], vals, color=colors[i % 10], alpha=0.08)
        if reference is not None:
            ax.plot(angles + angles[:1], [reference] * (k + 1), color="black", linestyle="--", linewidth=1,
                    label=FP_LABEL)
        ax.set_xticks(angles, [_wrap(a, 14) for a in axis_labels], fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        finite = [v for vals in series.values() for v in vals if np.isfinite(v)]
        if finite:
            lo = min(finite + ([reference] if reference else []))
            hi = max(finite + ([reference] if reference else []))
            pad = 0.1 * (hi - lo or abs(hi) or 1)
            ax.set_ylim(0.0 if lo >= 0 else lo - pad, hi + pad)
        ax.set_title(unit, fontsize=8, pad=24)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.05, 1.0), frameon=False, title=legend_title,
              title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
