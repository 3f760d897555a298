"Tests for diffula.explorer and diffula.live: the app without a browser (values set, buttons clicked as a browser would)."
import re, shlex
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
import torch
import ipywidgets as W
from diffula.attack import AttackConfig
from diffula.case import Case
from diffula.cli import build_parser, case_from_args
from diffula.pipeline import run_case
from diffula.explorer import Explorer, explore
from diffula.live import explorer_setting, attack_command, live_case, case_config, SchedulePlot, KNOBS
from diffula.schedules import clip_schedule, layer_window

PKG = Path(__file__).resolve().parents[1]/"diffula"


@pytest.fixture(scope="module")
def app():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    a = explore(user=1, device="cpu", display=False, stream_every=1)
    yield a
    a.stop(); a.wait(60)
    torch.set_num_threads(old)


def _images(w):
    "Every ipywidgets Image in a widget tree."
    if isinstance(w, W.Image): yield w
    for c in getattr(w, "children", ()): yield from _images(c)


def test_no_broken_image_before_the_first_run():
    a = Explorer(user=0, device="cpu")
    images = list(_images(a.widget))
    assert len(images) == 4                                                 # schedules, private batch, reconstruction, snapshots
    for img in images:                                                      # an Image without a value shows a broken icon
        assert (len(img.value) > 0 and img.layout.display != "none") or img.layout.display == "none", img._dom_classes
    assert a.recon_image.layout.display == "none" and a.recon_placeholder.layout.display != "none"
    assert a.schedule_image.value[:4] == b"\x89PNG" and a.private_image.value[:4] == b"\x89PNG"


def test_sliders_start_at_the_config(app):
    c, base = app.config, app.setting.config
    for k in KNOBS:
        assert getattr(c, k.field) == getattr(base, k.field), k.field
    assert c == base and app.case == replace(app.setting.case, user=1)


def test_slider_changes_config_and_figure(app):
    png = app.schedule_image.value
    app.w["clip_start"].value = 2.2
    assert app.config.clip_start == 2.2 and app.case.config == {"clip_start": 2.2}
    assert app.schedule_image.value != png                                  # the figure was redrawn
    np.testing.assert_allclose(app.plot.zeta_line.get_ydata(), clip_schedule(app.config.steps, 2.2, app.config.clip_end))
    png = app.schedule_image.value
    app.w["window_end_frac"].value = 0.5
    assert app.config.window_end_frac == 0.5 and app.schedule_image.value != png
    np.testing.assert_allclose(app.plot.image.get_array(), layer_window(app.config.steps, 21, end_frac=0.5).T)
    png = app.schedule_image.value
    app.w["t_end"].value = 200
    assert app.plot.tau_line.get_ydata()[-1] < 260 and app.schedule_image.value != png
    n = len(app.redraw_times)
    app.w["lr"].value = 2.0                                                 # not a schedule: config changes, no redraw
    assert app.config.lr == 2.0 and len(app.redraw_times) == n and "--set lr=2.0" in app.command_line()
    app.set(clip_start=app.setting.config.clip_start, window_end_frac=1.0, t_end=app.setting.config.t_end,
            lr=app.setting.config.lr)
    assert app.case.config == {}


def test_the_cli_rebuilds_the_same_case(app):
    app.set(clip_start=1.9, window_deep=0.5, gm_weight=300.0, bn_mode="train", steps=100, t_star=None, seed=3,
            prior_grad="full")
    for prior_only in (False, True):
        app.prior_only.value = prior_only
        cmd = app.command_line()
        a = build_parser().parse_args(shlex.split(cmd)[1:])
        case = case_from_args(a, method=a.method, user=a.user)
        assert case == app.case, cmd                                        # the same Case: same key, same run
        assert case_config(case) == app.config
    assert app.case.method == "control" and app.config.gm_weight == 0.0 and "--method control" in cmd
    app.prior_only.value = False
    s = app.setting.config
    app.set(clip_start=s.clip_start, window_deep=s.window_deep, gm_weight=s.gm_weight, bn_mode="eval", steps=s.steps,
            t_star=s.t_star, seed=0, prior_grad=s.prior_grad)
    assert app.case.config == {}


def test_attack_command_uses_only_existing_flags():
    known = {s for a in build_parser()._subparsers._group_actions[0].choices["attack"]._actions for s in a.option_strings}
    for case in (Case.demo(user=3, task_label="expression", bn_mode="train", model_seed=2, config={"window_alpha": 0.9}),
                 Case.paper(method="control", device="cuda:1", prior="/tmp/ffhq.pt", evaluator="deepface", seed=5)):
        cmd = attack_command(case)
        assert set(re.findall(r"(?<!\S)--[a-z-]+", cmd)) <= known, cmd
        a = build_parser().parse_args(shlex.split(cmd)[1:])
        assert case_from_args(a, method=a.method, user=a.user) == case


def test_user_choice_changes_the_private_batch(app):
    png = app.private_image.value
    app.user.value = 4
    assert app.private_image.value != png and "synth0-4" in app.true_html.value and app.case.user == 4
    app.user.value = 1


def test_run_is_run_case_bit_for_bit(app):
    "The app's Run and `run_case` on the same case: the same reconstruction, to the bit."
    app.set(steps=4, t_star=None, clip_start=1.7)
    case = app.case
    assert case == Case.demo(user=1, config=dict(steps=4, t_star=None, clip_start=1.7, snapshot_every=1))
    app.run_button.click()
    run = app.wait(180)
    assert app.error is None, app.error
    res = run.result
    assert res.steps_done == 4 and not res.interrupted and not res.denoised and res.config == app.config
    assert app.frames == 4 and app.progress.value == 4 and "done: 4/4" in app.status.value
    assert bytes(app.recon_image.value[:4]) == b"\x89PNG" and app.recon_image.layout.display != "none"
    assert bytes(app.snap_image.value[:4]) == b"\x89PNG" and app.snap_image.layout.display != "none"
    ref = run_case(Case.demo(user=1, config=dict(steps=4, t_star=None, clip_start=1.7, snapshot_every=1)), progress=False)
    assert torch.equal(res.images, ref.result.images)                       # the final image, bit for bit
    assert torch.equal(res.x_opt, ref.result.x_opt)
    assert run.metrics["inferred"] == ref.metrics["inferred"] and run.metrics["true"] == ref.metrics["true"]
    assert run.metrics["similarity_to_batch"] == ref.metrics["similarity_to_batch"]
    assert run.metrics["key"] == ref.metrics["key"] == case.key()
    for k in ("gender", "race", "age"): assert k in app.attr_html.value
    app.set(steps=app.setting.config.steps, t_star=app.setting.config.t_star, clip_start=app.setting.config.clip_start)


def test_prior_only_runs_the_control(app):
    app.set(steps=2, t_star=None, gm_weight=0.0)
    run = app.run()
    assert app.error is None, app.error
    assert run.metrics["case"]["method"] == "control" and run.metrics["settings"]["gm_weight"] == 0.0
    assert run.result.steps_done == 2 and "done: 2/2" in app.status.value
    app.set(steps=app.setting.config.steps, t_star=app.setting.config.t_star, gm_weight=app.setting.config.gm_weight)
    assert app.case.method == "diffula"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error path of a CUDA setting without CUDA")
def test_run_error_is_reported_and_the_app_recovers(app):
    app.use_setting(explorer_setting("cuda"))
    assert (app.config.steps, app.batch_size, app.image_size) == (AttackConfig().steps, 30, 64)
    app.run_button.click(); app.wait(60)
    assert app.error is not None and app.case_run is None and "error" in app.status.value
    assert not app.run_button.disabled and not app.running
    assert app.device.value == "cuda"
    app.device.value = "cpu"                                                # the device choice switches the setting back
    assert (app.config.device, app.config.steps, app.batch_size) == ("cpu", AttackConfig.cpu().steps, 8)
    assert list(app.device.options) == ["cpu"] and "CPU" in app.note.value


def test_schedule_plot_redraws_the_background_only_for_new_limits():
    c = AttackConfig.cpu()
    p = SchedulePlot(*c.schedules(21))
    p.png(); n = p.full_draws
    for z in (1.2, 1.4, 1.6): p.update(*replace(c, clip_start=z).schedules(21)).png()
    assert p.full_draws == n                                                # data-only changes reuse the background
    p.update(*replace(c, steps=500).schedules(21)).png()
    assert p.full_draws == n + 1                                            # new x-limits redraw it


def test_snapshots_scale_with_the_steps():
    ref = AttackConfig.cpu()
    a = Explorer(user=0, device="cpu", steps=3)                             # an override of the starting steps
    assert a.config.steps == 3 and a.config.snapshot_every == 1
    a.set(steps=ref.steps)
    assert a.config.snapshot_every == ref.snapshot_every and a.case.config == {}   # the preset's snapshots per run
    a.set(steps=ref.steps//2)
    assert a.config.snapshot_every == max(1, round(ref.snapshot_every/2))
    assert Explorer(user=0, device="cpu", snapshot_every=7).set(steps=100).config.snapshot_every == 7


def test_only_the_explorer_imports_ipywidgets():
    users = sorted(f.name for f in PKG.glob("*.py") if re.search(r"^\s*(import|from)\s+ipywidgets", f.read_text(), re.M))
    assert users == ["explorer.py"]


def test_live_and_explorer_import_no_later_stage_nor_private_names():
    import ast
    for mod, later in (("live", {"cli", "explorer", "analysis"}), ("explorer", {"cli"})):
        tree = ast.parse((PKG/f"{mod}.py").read_text())
        froms = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1]
        assert froms, mod
        for n in froms:
            assert n.module not in later, (mod, n.module)                   # a module never imports a later stage
            assert not [a.name for a in n.names if a.name.startswith("_")], (mod, n.module)   # nor a private name
        plain = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in plain if m.startswith("diffula")], (mod, plain)


def test_paper_cpu_preset_in_the_explorer():
    "explore(preset='paper-cpu') opens the paper's federated setting with the CPU levers; its command line says so."
    a = Explorer(user=2, device="cpu", preset="paper-cpu")
    c = a.setting.case
    assert (c.preset, c.image_size, c.batch_size, c.user) == ("paper-cpu", 64, 30, 0)   # the setting; the user is a slider
    assert (a.setting.config.copies, a.setting.config.precision, a.setting.config.window_only) == (8, "bf16", True)
    assert "paper_cpu" in a.setting.note and "--preset paper-cpu" in attack_command(c, "out/x")
    with pytest.raises(ValueError, match="preset"):
        explorer_setting("cpu", preset="gpu")
