"""The Phase-2 figures of cryoem.plots build, with the expected number of axes."""

from __future__ import annotations

import numpy as np
import pytest

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cryoem import alignment, plots, rotations  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def pair():
    true = rotations.sample_uniform(40, seed=0)
    noise = rotations.axis_angle_to_quaternion(np.random.default_rng(1).standard_normal((40, 3)),
                                               np.full(40, 0.2))
    return rotations.multiply(true, noise), true


def test_viewing_directions(pair):
    estimated, true = pair
    fit = alignment.align_physical(estimated, true)
    fig = plots.viewing_directions(estimated, fit.apply(true), title="test", max_points=30)
    assert len(fig.axes) == 2  # map + colour bar


def test_orientation_errors(pair):
    estimated, true = pair
    one = alignment.align_o4(estimated, true)
    assert len(plots.orientation_errors(one).axes) == 1
    both = {"o4": one, "physical": alignment.align_physical(estimated, true)}
    fig = plots.orientation_errors(both, bins=12, title="errors")
    assert len(fig.axes) == 1
    assert len(fig.axes[0].get_legend().get_texts()) == 2


def test_recovery_errors():
    table = {"exact": {"o4": 0.0, "physical": 1.6}, "learned": {"o4": 1.2, "physical": 1.9}}
    fig = plots.recovery_errors(table, reference=alignment.RANDOM_MEAN_ERROR)
    assert len(fig.axes) == 1
    assert len(fig.axes[0].patches) == 4


def test_loss_vs_error():
    fig = plots.loss_vs_error([0.1, 0.2, 0.5], [0.05, 0.3, 1.2], labels=["a", "b", "c"],
                              title="runs")
    assert len(fig.axes) == 1


def test_recovery_curves():
    assert len(plots.recovery_curves([1.0, 0.5, 0.2]).axes) == 1
    fig = plots.recovery_curves({"spectral": [0.5, 0.4], "random": [1.2, 0.9, 0.7]})
    assert len(fig.axes) == 1
    assert len(fig.axes[0].get_lines()) == 2


def test_common_line_scores():
    angles = np.linspace(-np.pi, np.pi, 37)
    curves = {"turn": np.cos(angles) ** 2, "tilt": np.cos(angles / 2) ** 2}
    fig = plots.common_line_scores(angles, curves, best=1.0,
                                   marks={"C": (0.0, 1.0), "twin": (np.pi, 1.0)})
    assert len(fig.axes) == 1
    assert len(fig.axes[0].get_legend().get_texts()) == 3  # two curves + the chosen score
    samples = {"plain": np.random.default_rng(0).uniform(0, 1, 50),
               "transposed": np.random.default_rng(1).uniform(0, 0.5, 50)}
    fig = plots.common_line_scores(angles, curves, samples=samples, best=1.0, title="landscape")
    assert len(fig.axes) == 2


# ---------------------------------------------------------------- Phase 3
def test_map_slices():
    rng = np.random.default_rng(0)
    maps = {"truth": rng.standard_normal((16, 16, 16)), "reconstruction": np.zeros((16, 16, 16))}
    fig = plots.map_slices(maps, voxel_size=2.0, title="maps")
    assert len(fig.axes) == 6  # 2 maps × 3 slices
    assert len(plots.map_slices([maps["truth"]]).axes) == 3


def test_fsc_curves():
    from cryoem import resolution

    rng = np.random.default_rng(1)
    a = rng.standard_normal((16, 16, 16))
    b = a + rng.standard_normal((16, 16, 16))
    same = resolution.fsc(a, a, pixel_size=2.0)
    noisy = resolution.fsc(a, b, pixel_size=2.0)
    unrelated = resolution.FSC(same.shells, np.full(8, 0.05), 2.0, 16)  # resolution inf
    fig = plots.fsc_curves({"same": same, "noisy": noisy, "unrelated": unrelated},
                           thresholds=(0.5, 0.143), title="FSC")
    assert len(fig.axes) == 1
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(texts) == 3 and texts[0] == "same: 4.00 Å" and texts[2].startswith("unrelated: >")
    assert len(plots.fsc_curves(same, thresholds=0.143).axes) == 1


def test_volume_rendering_is_optional():
    volume = np.zeros((8, 8, 8), dtype=np.float32)
    volume[4, 4, 4] = 1.0
    try:
        import ipyvolume  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="volume-rendering"):
            plots.volume_rendering(volume)
    else:
        assert plots.volume_rendering(volume) is not None
