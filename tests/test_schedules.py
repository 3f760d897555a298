"Tests for diffula.schedules: Appendix C and Fig. 5 (τ, ζ, sliding layer window)."
import numpy as np
import pytest
import matplotlib
matplotlib.use("Agg")
from diffula.schedules import time_schedule, clip_schedule, layer_window, plot_schedules


def test_time_schedule_endpoints_and_trend():
    clean = time_schedule(1000, noise=0)
    assert clean[0] == 999 and clean[-1] == 500            # 1000 clipped to T-1, ends at 500 (Appendix C)
    assert np.all(np.diff(clean) <= 0)
    lin = time_schedule(1000, noise=0, modulate=False)
    assert np.all(clean <= lin)                             # the cosine modulation anneals faster than linear
    assert clean[500] < lin[500]
    assert time_schedule(1000, t_start=800, t_end=100, noise=0)[[0, -1]].tolist() == [800, 100]


def test_time_schedule_bounds_dtype_noise():
    tau = time_schedule(4000, t_start=1000, t_end=5, noise=80, seed=1)
    assert tau.dtype == np.int64 and tau.shape == (4000,)
    assert tau.min() >= 1 and tau.max() <= 999             # in the scheduler's range
    clean = time_schedule(4000, t_start=1000, t_end=5, noise=0)
    dev = (tau - clean)[(clean > 100) & (clean < 900)]      # away from the clipping
    assert np.abs(dev).max() <= 80 + 1                      # amplitude respected (+1 for rounding)
    assert np.abs(dev).max() > 60 and abs(dev.mean()) < 10  # and used: uniform noise fills [-a, a] around zero
    assert np.all(time_schedule(50, num_train_timesteps=200, noise=30) <= 199)


def test_time_schedule_determinism():
    assert np.array_equal(time_schedule(300, seed=7), time_schedule(300, seed=7))
    assert not np.array_equal(time_schedule(300, seed=7), time_schedule(300, seed=8))


def test_clip_schedule():
    z = clip_schedule(4000)
    assert z[0] == pytest.approx(1.5) and z[-1] == pytest.approx(1.0)
    assert np.all(np.diff(z) <= 0) and z.min() >= 1.0 and z.max() <= 1.5
    assert z[len(z)//2] == pytest.approx(1.25, abs=1e-3)   # cosine ramp: half-way at mid-run
    assert z[len(z)//10] > 1.5 - 0.25*0.2                   # cosine starts flat (slower than linear)
    assert clip_schedule(5, start=2.0, end=0.5)[[0, -1]].tolist() == pytest.approx([2.0, 0.5])


def test_layer_window_bounds_and_peak():
    W = layer_window(4000, 30)
    assert W.shape == (4000, 30) and W.dtype == np.float64
    assert W.min() >= 0 and W.max() <= 1
    peak = W.argmax(1)
    assert peak[0] == 29 and peak[-1] == 0                  # deepest layer first, shallowest last
    assert np.all(np.diff(peak) <= 0)                       # the peak only moves towards shallow layers
    assert np.allclose(W.max(1), 1.0, atol=0.02)            # the centre layer is (nearly) at full weight
    assert W[0, 0] == 0 and W[-1, -1] < 0.1                 # shallow layers off at first; deep ones fade at the end


def test_layer_window_asymmetric():
    L = 40
    W = layer_window(101, L, shallow_width=0.1, deep_width=0.5)
    row = W[50]                                             # centre at layer 19.5
    c = 19.5
    on = np.nonzero(row > 0)[0]
    assert c - on.min() <= 0.1*L + 1 and on.max() - c >= 0.5*L - 1   # short shallow side, long deep side
    assert row[on.max()] > 0 and np.all(row[: int(c - 0.1*L) - 1] == 0)


def test_layer_window_end_frac_and_errors():
    W = layer_window(100, 10, end_frac=0.5)
    assert np.all(W[50:].argmax(1) == 0)
    with pytest.raises(ValueError, match="n_layers"): layer_window(10, 0)
    with pytest.raises(ValueError, match="end_frac"): layer_window(10, 5, end_frac=0)
    with pytest.raises(ValueError, match="positive integer"): clip_schedule(0)
    with pytest.raises(ValueError, match="noise"): time_schedule(10, noise=-1)


def test_plot_schedules():
    fig = plot_schedules(steps=200, n_layers=8)
    assert len(fig.axes) == 4
    ax_w = fig.axes[1]
    assert ax_w.images[0].get_array().shape == (8, 200)
