"""How fast the explorer's schedules figure (Fig. 5) follows a slider, kernel side.

Moves sliders of a real `Explorer` app (no browser: widget values are set as the browser would set them) and times the
app's handler for each event: the config from the widgets, `AttackConfig.schedules`, the figure update, the PNG and the
`Image` widget's new value (plus validation and the command line). Side by side in the same run, the naive redraw:
recreating the figure with `diffula.schedules.plot_schedules` and saving it as PNG on every event.
Prints medians (ms) and the ratio.

Usage: OMP_NUM_THREADS=1 python benchmarks/explorer_redraw.py [events]
"""
import os, sys, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
import io
from dataclasses import replace
import numpy as np
import torch
import matplotlib.pyplot as plt
from diffula.explorer import Explorer
from diffula.schedules import plot_schedules


def median_ms(ts): return 1000*float(np.median(ts))


def slider_events(app, field, values):
    "Move one slider through `values`; the app's handler times and its figure-redraw times (s)."
    app.change_times.clear(); app.redraw_times.clear()
    for v in values: app.w[field].value = v
    return list(app.change_times), list(app.redraw_times)


def naive(cfg, n_layers, values, field):
    "Recreate Fig. 5 with plot_schedules and encode it, per event (s)."
    ts = []
    for v in values:
        t0 = time.perf_counter()
        c = replace(cfg, **{field: v})
        fig = plot_schedules(c.steps, n_layers, *c.schedules(n_layers))
        buf = io.BytesIO(); fig.savefig(buf, format="png"); plt.close(fig)
        ts.append(time.perf_counter() - t0)
    return ts


def main(events=40):
    torch.set_num_threads(1)
    app = Explorer(user=0, device="cpu")
    zeta = list(np.round(np.linspace(1.0, 3.0, events), 2))
    print(f"explorer redraw, {events} events per row, torch threads {torch.get_num_threads()}, "
          f"figure {app.plot.fig.get_size_inches()} in @ {app.plot.fig.dpi:.0f} dpi")
    rows = []
    for steps in (app.config.steps, 4000):
        app.set(steps=steps)
        cfg = app.config
        t_app, t_fig = slider_events(app, "clip_start", zeta)
        t_naive = naive(cfg, app.n_layers, zeta, "clip_start")
        rows.append((f"zeta start slider, S={steps}", median_ms(t_app), median_ms(t_fig), median_ms(t_naive)))
        t_app, t_fig = slider_events(app, "window_deep", list(np.round(np.linspace(0.3, 1.2, events), 2)))
        rows.append((f"deep-width slider, S={steps}", median_ms(t_app), median_ms(t_fig), float("nan")))
    app.set(steps=app.setting.config.steps)
    t_app, t_fig = slider_events(app, "steps", list(range(200, 200 + events)))   # new x-limits: the background is redrawn
    rows.append(("steps slider (new axes)", median_ms(t_app), median_ms(t_fig), float("nan")))
    print(f"{'event':28s} {'handler ms':>11s} {'of it, figure ms':>17s} {'plot_schedules ms':>18s} {'ratio':>6s}")
    for name, a, f, n in rows:
        print(f"{name:28s} {a:11.1f} {f:17.1f} {n:18.1f} {n/a if n == n else float('nan'):6.1f}")
    print(f"MEDIAN REDRAW (zeta start slider, S={app.setting.config.steps}, whole handler): {rows[0][1]:.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
