"""mixq.reports.plots.panels: one row of axes written to a PNG when the block ends."""

from __future__ import annotations

import pytest

from mixq.reports.plots import panels, pyplot


def test_panels_writes_png_with_one_axis_per_panel(tmp_path):
    path = tmp_path / "p.png"
    with panels(3, path, panel_size=(2.0, 1.5)) as axes:
        assert len(axes) == 3
        fig = axes[0].figure
        for i, ax in enumerate(axes):
            ax.plot([0, 1], [i, i + 1], label=f"line {i}")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.get_size_inches() == pytest.approx((6.0, 1.5))
    assert all(ax.get_legend() is not None for ax in axes)
    assert not pyplot().fignum_exists(fig.number)  # closed


def test_panels_without_labels_has_no_legend(tmp_path):
    with panels(1, tmp_path / "p.png") as axes:
        axes[0].plot([0, 1], [0, 1])
    assert axes[0].get_legend() is None


def test_panels_closes_and_writes_nothing_when_the_block_raises(tmp_path):
    path = tmp_path / "p.png"
    with pytest.raises(RuntimeError, match="boom"), panels(2, path) as axes:
        fig = axes[0].figure
        raise RuntimeError("boom")
    assert not path.exists()
    assert not pyplot().fignum_exists(fig.number)


def test_panels_rejects_zero_panels(tmp_path):
    with pytest.raises(ValueError, match="at least 1"), panels(0, tmp_path / "p.png"):
        pass
