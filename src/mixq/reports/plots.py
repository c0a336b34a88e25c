"""Plots drawn from result data (matplotlib imported lazily, Agg backend): fitness curves, bits per layer,
sensitivity heat maps."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from mixq.evoq.sensitivity import SensitivityTable


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use.

    Returns:
        The pyplot module.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def panels(
    n: int, path: str | os.PathLike, panel_size: tuple[float, float] = (5.2, 4.0), legend_size: float = 8
) -> Iterator[list]:
    """A row of ``n`` axes (one panel per model, say) saved to ``path`` when the block ends.

    On leaving the block every panel gets a light grid and its legend, the figure is laid out, written
    at 120 dpi and closed (closed also when the block raises, then nothing is written).

    Args:
        n: number of panels (at least 1).
        path: PNG file.
        panel_size: width and height of one panel, inches.
        legend_size: legend font size.

    Returns:
        A context manager yielding the list of ``n`` matplotlib axes.
    """
    if n < 1:
        raise ValueError(f"panels: n must be at least 1, got {n}")
    plt = pyplot()
    fig, axes = plt.subplots(1, n, figsize=(panel_size[0] * n, panel_size[1]), squeeze=False)
    try:
        yield list(axes[0])
        for ax in axes[0]:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=legend_size)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def plot_fitness(
    histories: dict[str, Sequence[float]], path: str | os.PathLike, title: str = "EvoQ search"
) -> None:
    """Best fitness (output MSE, log scale) per iteration, one line per run.

    Args:
        histories: label -> best fitness per iteration.
        path: PNG file.
        title: plot title.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, hist in histories.items():
        ax.plot(np.arange(len(hist)), hist, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("best output MSE (50 samples)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bits(
    layers: Sequence[str], bits: Sequence[int], params: Sequence[int], path: str | os.PathLike, title: str = ""
) -> None:
    """Bits per layer (bars) beside each layer's parameter count (line, log scale).

    Args:
        layers: layer names.
        bits: chosen bits per layer.
        params: weight parameters per layer.
        path: PNG file.
        title: plot title.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.4, 0.22 * len(layers)), 4.2))
    x = np.arange(len(layers))
    ax.bar(x, bits, color="tab:blue", alpha=0.8, label="weight bits")
    ax.set_ylabel("weight bits")
    ax.set_ylim(0, max(bits) + 1)
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=90, fontsize=6)
    ax2 = ax.twinx()
    ax2.plot(x, params, color="tab:orange", marker="o", ms=3, label="parameters")
    ax2.set_yscale("log")
    ax2.set_ylabel("parameters")
    ax.set_title(title or "bits per layer")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sensitivity(table: SensitivityTable, path: str | os.PathLike, title: str = "") -> None:
    """Heat map of log10 output MSE per layer (rows) and bit-width (columns).

    Args:
        table: the sensitivity table.
        path: PNG file.
        title: plot title.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, max(3.5, 0.2 * len(table.layers) + 1.2)))
    data = np.log10(np.maximum(table.mse, 1e-12))
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(table.bits)))
    ax.set_xticklabels(table.bits)
    ax.set_yticks(range(len(table.layers)))
    ax.set_yticklabels(table.layers, fontsize=6)
    ax.set_xlabel("weight bits of that layer alone")
    ax.set_title(title or "sensitivity: log10 output MSE")
    fig.colorbar(im, ax=ax, label="log10 MSE")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
