"""Comparison plots (PNG, matplotlib's Agg backend, readable at 100%)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from gcfl.report.tables import (
    FEDERATED,
    Run,
    display_name,
    has_metric,
    round_statistics,
    strategies_in,
)

COLORS = {
    "gcfl": "tab:blue",
    "fedavg": "tab:orange",
    "fedavg-tuned": "tab:red",
    "centralized": "tab:green",
}
GRID_PREFIX = "fedavg@"  # fedavg-tuned's grid points: thin dashed lines, light to dark by lr
DPI = 110


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def plot_metric(runs: Sequence[Run], metric: str, path: Path) -> Path:
    """Mean ``metric`` per round for every strategy, with a ±1 std band across repeats.

    fedavg-tuned's grid points (``fedavg@<lr>``) are thin dashed lines, their
    oracle's pick (``fedavg-tuned``) a solid one labelled as such.
    """
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    grid = [s for s in strategies_in(runs) if s.startswith(GRID_PREFIX)]
    shades = plt.get_cmap("copper_r")
    for strategy, series in round_statistics(runs, metric).items():
        rounds = np.arange(1, len(series) + 1)
        mean = np.array([m for m, _ in series])
        std = np.array([s for _, s in series])
        label = display_name(strategy, runs)
        style: dict = {"marker": "o", "color": COLORS.get(strategy)}
        band = 0.2
        if strategy in grid:
            shade = 0.25 + 0.6 * grid.index(strategy) / max(len(grid) - 1, 1)
            style = {"marker": ".", "linestyle": "--", "linewidth": 1, "color": shades(shade)}
            band = 0.07
        elif strategy == "centralized":
            label = f"{strategy} (epochs)"
        (line,) = axes.plot(rounds, mean, label=label, **style)
        if np.any(std > 0):
            axes.fill_between(rounds, mean - std, mean + std, color=line.get_color(), alpha=band)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("round (centralized: epoch)")
    what = (
        metric.replace("federated_", "federated validation ")
        if metric in FEDERATED
        else (f"test {metric}")
    )
    axes.set_ylabel(what)
    axes.set_title(f"{what[0].upper()}{what[1:]} per round")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8 if grid else None)
    return _save(figure, path)


def _gcfl_run(runs: Sequence[Run]) -> Run | None:
    return next((r for r in runs if r["strategy"] == "gcfl" and r["repeat"] == 0), None)


def _cluster_colors(labels: Sequence[int]) -> list:
    palette = plt.get_cmap("tab10")
    return ["lightgray" if label == -1 else palette(label % 10) for label in labels]


def plot_clusters(runs: Sequence[Run], path: Path) -> Path | None:
    """The gcfl clients in (log2 batch size, log10 lr), by cluster, first and last round."""
    run = _gcfl_run(runs)
    if run is None or not run["rounds"]:
        return None
    chosen = [run["rounds"][0], run["rounds"][-1]]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharex=True, sharey=True)
    for ax, record in zip(axes, chosen, strict=True):
        clients = [c for c in record["clients"] if c.get("lr") and c.get("batch_size")]
        labels = [c["cluster"] if c["cluster"] is not None else -1 for c in clients]
        ax.scatter(
            [math.log2(c["batch_size"]) for c in clients],
            [math.log10(c["lr"]) for c in clients],
            c=_cluster_colors(labels),
            edgecolors="black",
            linewidths=0.5,
            s=50,
        )
        for label in sorted(set(labels)):
            ax.scatter(
                [],
                [],
                c=_cluster_colors([label]),
                edgecolors="black",
                label="noise" if label == -1 else f"cluster {label}",
            )
        ax.set_title(f"round {record['round']}")
        ax.set_xlabel("log2(batch size)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("log10(learning rate)")
    figure.suptitle("gcfl clients by cluster (hyperparameters they trained with)")
    return _save(figure, path)


def plot_cluster_sizes(runs: Sequence[Run], path: Path) -> Path | None:
    """Stacked cluster sizes per round (largest first; noise in gray on top)."""
    run = _gcfl_run(runs)
    if run is None:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    palette = plt.get_cmap("tab10")
    for record in run["rounds"]:
        labels = [c["cluster"] for c in record["clients"] if c.get("cluster") is not None]
        counts = [
            *sorted(((labels.count(k), k) for k in set(labels) if k != -1), reverse=True),
            (labels.count(-1), -1),
        ]
        bottom = 0
        for rank, (count, label) in enumerate(counts):
            color = "lightgray" if label == -1 else palette(rank % 10)
            axes.bar(record["round"], count, bottom=bottom, color=color, edgecolor="black")
            bottom += count
    axes.legend(
        handles=[
            Patch(facecolor=palette(0), edgecolor="black", label="clusters, largest first"),
            Patch(facecolor="lightgray", edgecolor="black", label="noise (DBSCAN outliers)"),
        ]
    )
    axes.set_xlabel("round")
    axes.set_ylabel("clients")
    axes.set_title("gcfl cluster sizes per round")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3, axis="y")
    return _save(figure, path)


def plot_lr_trajectories(runs: Sequence[Run], path: Path) -> Path | None:
    """Each gcfl client's learning rate over the rounds."""
    run = _gcfl_run(runs)
    if run is None:
        return None
    trajectories: dict[int, list[tuple[int, float]]] = {}
    for record in run["rounds"]:
        for client in record["clients"]:
            if client.get("lr"):
                trajectories.setdefault(client["id"], []).append((record["round"], client["lr"]))
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for points in trajectories.values():
        axes.plot(*zip(*points, strict=True), marker=".", alpha=0.7)
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("round")
    axes.set_ylabel("learning rate")
    axes.set_title(f"gcfl: each client's learning rate ({len(trajectories)} clients)")
    axes.grid(alpha=0.3, which="both")
    return _save(figure, path)


def write_plots(runs: Sequence[Run], out_dir: Path) -> list[Path]:
    """Every plot the runs allow; returns the files written."""
    written = [
        plot_metric(runs, "accuracy", out_dir / "accuracy.png"),
        plot_metric(runs, "loss", out_dir / "loss.png"),
    ]
    if has_metric(runs, "federated_accuracy"):
        written.append(plot_metric(runs, "federated_accuracy", out_dir / "federated_accuracy.png"))
    if "gcfl" in strategies_in(runs):
        for plotter, name in (
            (plot_clusters, "clusters.png"),
            (plot_cluster_sizes, "cluster_sizes.png"),
            (plot_lr_trajectories, "lr_trajectories.png"),
        ):
            result = plotter(runs, out_dir / name)
            if result is not None:
                written.append(result)
    return written
