"""Figures: expert usage (shares per expert, 2-D maps of embeddings coloured by expert) and the report's
metric against the number of experts.

Figures are drawn on matplotlib's Agg canvas through the object API (no pyplot, so no global figure
state and no display needed) and written atomically (`sbmoe.io.atomic_write_bytes`) in the format the
file name ends with: .png, .pdf or .svg (`FIGURE_FORMATS`). PDF and SVG carry no creation date, so the same
figure gives the same bytes. matplotlib is imported when a figure is drawn, not with this module.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sbmoe.analysis.routing import ACTIVE_SHARE, expert_shares
from sbmoe.evaluation.metrics import metric_label
from sbmoe.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

DPI = 150
from sbmoe.analysis.formats import FIGURE_FORMATS  # noqa: E402  (re-exported)

_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}  # metadata that would vary between runs
PROJECTIONS = ("pca", "tsne")
TSNE_EXACT_POINTS = 1000  # up to this many points the exact t-SNE gradient is the faster
PCA_FIT_POINTS = 100_000  # PCA components from a sample this large are indistinguishable from all rows
QUERY_COLOR = "#1f77b4"
DOCUMENT_COLOR = "#ff7f0e"


def _figure(**kwargs: Any) -> Figure:
    """A matplotlib Figure on the Agg canvas (no pyplot state); kwargs go to `Figure`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def figure_format(path: str | Path) -> str:
    """The format a figure file name asks for: "png", "pdf" or "svg" (its suffix, any case)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FIGURE_FORMATS:
        raise ValueError(f"a figure file must end in .png, .pdf or .svg, got {str(path)!r}")
    return suffix


def _save(fig: Figure, path: str | Path, bbox_inches: str | None = "tight") -> Path:
    """Write `fig` to `path` atomically (`sbmoe.io.atomic_write_bytes`), in the format of its suffix;
    release the figure."""
    path = Path(path)
    file_format = figure_format(path)
    extra = {"metadata": _NO_DATE[file_format]} if file_format in _NO_DATE else {}
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=file_format, dpi=DPI, bbox_inches=bbox_inches, **extra)
    finally:
        fig.clear()
    atomic_write_bytes(path, buffer.getvalue())
    logger.info("Wrote %s", path)
    return path


def _expert_colors(num_experts: int) -> list:
    """One distinct colour per expert: tab10 up to 10 experts, tab20 up to 20, else a sampled turbo map."""
    from matplotlib import colormaps

    if num_experts <= 10:
        return list(colormaps["tab10"].colors[:num_experts])
    if num_experts <= 20:
        return list(colormaps["tab20"].colors[:num_experts])
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, num_experts)]


def plot_expert_shares(
    query_shares: Sequence[float],
    doc_shares: Sequence[float],
    path: str | Path,
    title: str,
    null_expert: bool = False,
) -> Path:
    """Grouped bars per expert (queries beside documents, in % of texts) with the 1 % activation line.

    query_shares, doc_shares: [E] shares of texts whose top-1 expert is i (each sums to 1); with
    `null_expert`, the last entry is the null expert's (texts passed through unchanged), labelled "null".
    path: .png, .pdf or .svg. Returns `path`.
    """
    if len(query_shares) != len(doc_shares):
        raise ValueError(f"{len(query_shares)} query shares but {len(doc_shares)} document shares")
    num_experts = len(query_shares)
    queries = 100 * np.asarray(query_shares, dtype=float)
    docs = 100 * np.asarray(doc_shares, dtype=float)
    x = np.arange(num_experts)
    width = 0.4
    fig = _figure(figsize=(max(7.0, 0.8 * num_experts + 4), 4.5))
    ax = fig.add_subplot()
    query_bars = ax.bar(x - width / 2, queries, width, label="queries", color=QUERY_COLOR)
    doc_bars = ax.bar(x + width / 2, docs, width, label="documents", color=DOCUMENT_COLOR)
    if num_experts <= 16:  # value labels stay readable up to about this many groups
        for bars, values in ((query_bars, queries), (doc_bars, docs)):
            labels = [f"{value:.1f}" if value > 0 else "" for value in values]  # an empty slot speaks
            ax.bar_label(bars, labels=labels, fontsize=8, padding=2)
    ax.axhline(
        100 * ACTIVE_SHARE,
        color="0.3",
        linestyle="--",
        linewidth=1,
        label=f"{100 * ACTIVE_SHARE:g} % (activated)",
    )
    ax.set_xticks(x, [str(i) for i in x[: num_experts - int(null_expert)]] + ["null"] * int(null_expert))
    ax.set_xlabel("expert (top-1 choice)")
    ax.set_ylabel("texts routed to expert (%)")
    top = max(float(queries.max(initial=0)), float(docs.max(initial=0)), 100 * ACTIVE_SHARE)
    ax.set_ylim(0, top * 1.15 + 1)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # outside: never on a bar
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, path)


def project_2d(
    vectors: np.ndarray, method: str = "pca", seed: int = 0, fit_vectors: np.ndarray | None = None
) -> np.ndarray:
    """A 2-D projection [N, 2] of vectors [N, H]: scikit-learn PCA, or t-SNE (PCA-initialised, seeded).

    fit_vectors: for PCA, the vectors [M, H] the components are fitted on (default `vectors`).
    t-SNE has no separate fit: it embeds exactly the rows it is given.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"method must be one of {list(PROJECTIONS)}, got {method!r}")
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"need at least 2 vectors [N, H] to project, got shape {vectors.shape}")
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=min(2, vectors.shape[1]), random_state=seed)
        pca.fit(vectors if fit_vectors is None else np.asarray(fit_vectors, dtype=np.float32))
        points = pca.transform(vectors)
    else:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(1.0, (len(vectors) - 1) / 3))  # must stay below N
        # Barnes-Hut is slower than the exact gradient on small inputs (30 s against 0.1 s on 8 points).
        algorithm = "exact" if len(vectors) <= TSNE_EXACT_POINTS else "barnes_hut"
        points = TSNE(
            n_components=2,
            perplexity=perplexity,
            init="pca",
            learning_rate="auto",
            method=algorithm,
            random_state=seed,
        ).fit_transform(vectors)
    if points.shape[1] < 2:  # H = 1: nothing to spread on the second axis
        points = np.column_stack([points, np.zeros(len(points))])
    return points


def plot_embedding_map(
    vectors: np.ndarray,
    experts: np.ndarray,
    path: str | Path,
    title: str,
    method: str = "pca",
    max_points: int = 2000,
    seed: int = 0,
    num_experts: int | None = None,
) -> Path:
    """A 2-D map of vectors [N, H], each point coloured by its top-1 expert experts [N].

    method "pca" fits scikit-learn PCA on all N vectors (on a seeded sample of PCA_FIT_POINTS when N is
    larger); "tsne" runs t-SNE on a subsample of at most `max_points` (2,000 points take ~30 s on a
    CPU). Either way at most `max_points` points are drawn: a subsample chosen with `seed`, drawn in
    random order so that no expert hides the others. The legend reads "expert i (share %)", shares
    over all N texts. num_experts: E (default max(experts) + 1). path: .png, .pdf or .svg. Returns `path`.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"method must be one of {list(PROJECTIONS)}, got {method!r}")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    vectors = np.asarray(vectors)
    experts = np.asarray(experts, dtype=np.int64)
    if len(vectors) != len(experts):
        raise ValueError(f"{len(vectors)} vectors but {len(experts)} experts")
    from matplotlib.lines import Line2D

    num_experts = num_experts or int(experts.max(initial=-1)) + 1
    shares = expert_shares(experts, num_experts)

    rng = np.random.default_rng(seed)
    shown = rng.permutation(len(vectors))[:max_points]  # [n] rows drawn, in random order
    if method == "pca":  # components from (up to PCA_FIT_POINTS of) all texts; only the shown projected
        fit = (
            vectors
            if len(vectors) <= PCA_FIT_POINTS
            else vectors[rng.permutation(len(vectors))[:PCA_FIT_POINTS]]
        )
        points = project_2d(vectors[shown], "pca", seed, fit_vectors=fit)
    else:
        points = project_2d(vectors[shown], "tsne", seed)
    colors = _expert_colors(num_experts)

    fig = _figure(figsize=(8.5, 6.5))
    ax = fig.add_subplot()
    point_size = 14 if len(shown) <= 500 else 6
    ax.scatter(
        points[:, 0],
        points[:, 1],
        c=np.asarray(colors)[experts[shown]],  # [n, 3 or 4] RGB(A) per point
        s=point_size,
        alpha=0.75,
        linewidths=0,
    )
    handles = [  # one legend entry per expert that received any text
        Line2D(
            [], [], marker="o", linestyle="", color=colors[e], label=f"expert {e} ({100 * shares[e]:.1f} %)"
        )
        for e in range(num_experts)
        if shares[e] > 0
    ]
    axis = "PC" if method == "pca" else "t-SNE "
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    subtitle = (
        f"{len(shown):,} of {len(vectors):,} points"
        if len(shown) < len(vectors)
        else f"{len(vectors):,} points"
    )
    ax.set_title(f"{title}\n{method.upper() if method == 'pca' else 't-SNE'}, {subtitle}", fontsize=11)
    ax.legend(
        handles=handles,
        title="top-1 expert (share)",
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),  # outside the axes: no point hidden, whatever E
        fontsize=8,
        title_fontsize=9,
        framealpha=0.85,
    )
    ax.grid(alpha=0.2)
    return _save(fig, path)


# ------------------------------------------------------------------------ metric vs number of experts


@dataclass
class FigurePanel:
    """Metric (mean over seeds and in-domain collections) against the number of experts."""

    train_dataset: str
    base: str
    metric: str
    lines: dict[str, list[tuple[int, float]]]  # line label -> [(num_experts, value)], sorted by N
    baseline_label: str | None
    baseline_value: float | None


def metric_vs_experts_figure(panels: Sequence[FigurePanel]) -> Figure:
    """A matplotlib Figure (Agg, no pyplot state): one row per (training collection, base), one column per
    metric; one line per (system, mode), the baseline dashed."""
    settings = list(dict.fromkeys((p.train_dataset, p.base) for p in panels))
    metrics = list(dict.fromkeys(p.metric for p in panels))
    figure = _figure(figsize=(10, 4 * len(settings)), dpi=DPI, layout="constrained")
    axes = figure.subplots(len(settings), len(metrics), squeeze=False)
    for panel in panels:
        ax = axes[settings.index((panel.train_dataset, panel.base))][metrics.index(panel.metric)]
        counts: set[int] = set()
        for label, points in panel.lines.items():
            xs, ys = zip(*points, strict=True)
            counts.update(xs)
            ax.plot(xs, ys, marker="o", label=label)
        if panel.baseline_value is not None:
            ax.axhline(
                panel.baseline_value,
                linestyle="--",
                color="black",
                label=f"{panel.baseline_label} (baseline)",
            )
        ax.set_xticks(sorted(counts))
        ax.set_xlabel("number of experts N")
        ax.set_ylabel(f"{metric_label(panel.metric)} (mean of seeds, collections)")
        ax.set_title(
            f"{metric_label(panel.metric)}: {panel.base}\ntrained on {panel.train_dataset}", fontsize="medium"
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle("In-domain effectiveness vs number of experts")
    return figure


def plot_metric_vs_experts(panels: Sequence[FigurePanel], path: str | Path) -> Path:
    """`metric_vs_experts_figure(panels)` written to `path` (.png, .pdf or .svg; the whole canvas, no tight
    crop). Returns `path`."""
    return _save(metric_vs_experts_figure(panels), path, bbox_inches=None)
