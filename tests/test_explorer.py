"Tests for diffula.explorer: the widget logic without a browser (values set, buttons clicked as a browser would)."
import json, re, shlex, time
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
import torch
from diffula.attack import AttackConfig
from diffula.cli import build_parser
from diffula.explorer import (Explorer, explore, explorer_setting, attack_command, config_snippet, synth_user, SchedulePlot,
                              KNOBS)
from diffula.schedules import clip_schedule, layer_window
from diffula.synthfaces import SynthFaces


@pytest.fixture(scope="module")
def app():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    a = explore(user=1, device="cpu", display=False, stream_every=1)
    yield a
    a.stop(); a.wait(60)
    torch.set_num_threads(old)


def test_setting_follows_the_project_presets():
    cpu, gpu = explorer_setting("cpu"), explorer_setting("cuda:0", t_end=300)
    assert cpu.config == AttackConfig.cpu_demo(device="cpu", progress=False) and cpu.preset == "cpu_demo"
    assert (cpu.batch_size, cpu.image_size) == (8, 32) and "CPU" in cpu.note and "demo" in cpu.note
    assert gpu.config == AttackConfig(device="cuda:0", progress=False, t_end=300) and gpu.preset == "paper"
    assert (gpu.batch_size, gpu.image_size) == (30, 64)


def test_sliders_start_at_the_config(app):
    c = app.config
    base = app.setting.config
    for k in KNOBS:
        assert getattr(c, k.field) == getattr(base, k.field), k.field
    assert replace(c, snapshot_every=base.snapshot_every) == base


def test_slider_changes_config_and_figure(app):
    png = app.schedule_image.value
    app.w["clip_start"].value = 2.2
    assert app.config.clip_start == 2.2
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
    assert app.config.lr == 2.0 and len(app.redraw_times) == n and "--lr 2.0" in app.command_line()
    app.set(clip_start=app.setting.config.clip_start, window_end_frac=1.0, t_end=app.setting.config.t_end,
            lr=app.setting.config.lr)


def test_invalid_settings_disable_run(app):
    app.set(t_start=400, t_end=600)
    assert app.run_button.disabled and "t_end" in app.status.value
    app.run_button.click()
    assert not app.running and app.result is None
    app.set(t_start=app.setting.config.t_start, t_end=app.setting.config.t_end)
    assert not app.run_button.disabled and app.status.value == ""


def test_command_line_and_snippet(app):
    app.set(steps=120, clip_end=0.8, prior_grad="full", t_star=None)
    cmd = app.command_line()
    ns = build_parser().parse_args(shlex.split(cmd)[1:])
    assert (ns.command, ns.user, ns.steps, ns.prior_grad, ns.batch_size, ns.image_size) == ("attack", 1, 120, "full", 8, 32)
    assert ns.lr == app.config.lr
    missing = app.missing_flags()
    said = lambda k, v: missing.get(k, ...) == v or f"--set {k}={json.dumps(v)}" in cmd   # listed, or passed by --set
    assert said("clip_end", 0.8) and said("t_star", None) and "steps" not in missing
    assert "clip_end=0.8" in app.command_html.value
    snippet = config_snippet(app.config, "cpu_demo")
    assert snippet.startswith("AttackConfig.cpu_demo(") and eval(snippet) == replace(app.config, progress=True)
    assert config_snippet(AttackConfig(seed=3), "paper") == "AttackConfig(seed=3)"
    app.set(steps=app.setting.config.steps, clip_end=app.setting.config.clip_end, prior_grad=app.setting.config.prior_grad,
            t_star=app.setting.config.t_star)


def test_attack_command_uses_only_existing_flags():
    cmd, missing = attack_command(AttackConfig(window_alpha=0.9, bn_mode="train"), user=0, batch_size=30, image_size=64)
    flags = set(re.findall(r"--[a-z-]+", cmd))
    known = {s for a in build_parser()._subparsers._group_actions[0].choices["attack"]._actions for s in a.option_strings}
    assert flags <= known
    assert missing.get("window_alpha") == 0.9 or "--set window_alpha=0.9" in cmd
    assert ("--bn-mode" in known) == ("bn_mode" not in missing)             # a flag added to the CLI is used at once
    assert ("--set" in known) == (missing == {})                            # --set expresses every other knob


def test_the_cli_rebuilds_the_same_case_and_config(app):
    import diffula.cli as cli
    if not hasattr(cli, "case_from_args"): pytest.skip("this CLI builds its config inside run_attack (before the case runner)")
    from diffula.pipeline import diffula_config
    app.set(clip_start=1.9, window_deep=0.5, gm_weight=300.0, bn_mode="train", steps=100, t_star=None)
    a = build_parser().parse_args(shlex.split(app.command_line())[1:])
    case = cli.case_from_args(a, user=a.user)
    c = app.config
    assert (case.user, case.batch_size, case.image_size, case.task_label, case.model_seed, case.bn_mode) == \
           (1, app.batch_size, app.image_size, app.task_label, app.model_seed(), "train")
    assert replace(diffula_config(case), progress=False, snapshot_every=c.snapshot_every) == c   # exactly the app's config
    app.set(**{k: getattr(app.setting.config, k) for k in ("clip_start", "window_deep", "gm_weight", "bn_mode", "steps", "t_star")})


def test_synth_user_is_the_synthfaces_user():
    ref, u = SynthFaces(6, 4, seed=0, size=32, task_label="identity")[5], synth_user(5, 4, 32, "identity")
    assert u.user_id == ref.user_id and torch.equal(u.images, ref.images) and torch.equal(u.labels, ref.labels)
    assert u.attributes["gender"] == ref.attributes["gender"] and u.attributes["age"] == ref.attributes["age"]


def test_user_choice_changes_the_private_batch(app):
    png = app.private_image.value
    app.user.value = 4
    assert app.private_image.value != png and "synth0-4" in app.true_html.value
    app.user.value = 1


def test_run_streams_a_reconstruction(app):
    app.set(steps=2, t_star=None)
    app.run_button.click()
    res = app.wait(180)
    assert app.error is None, app.error
    assert res.steps_done == 2 and not res.interrupted and not res.denoised
    assert res.snapshots and res.snapshots[-1][0] == 2 and res.snapshots[-1][1].shape == (1, 3, 32, 32)
    assert app.frames == 2 and app.progress.value == 2
    assert bytes(app.recon_image.value[:4]) == b"\x89PNG" and bytes(app.snap_image.value[:4]) == b"\x89PNG"
    assert set(app.attributes["true"]) == {"gender", "race", "age"} and set(app.attributes["inferred"]) == {"gender", "race", "age"}
    assert res.config == app.config and "done: 2/2" in app.status.value
    ns = {}
    exec(app.python_code(), ns)                                             # the snippet reproduces the run
    torch.testing.assert_close(ns["result"].x_opt, res.x_opt, atol=1e-4, rtol=0)


def test_stop_keeps_the_partial_result(app):
    app.set(steps=300, t_star=None)
    app.run_button.click()
    t0 = time.time()
    while app.progress.value < 2 and time.time() - t0 < 120: time.sleep(0.02)
    assert app.running and app.run_button.disabled and not app.stop_button.disabled
    assert app.w["clip_start"].disabled                                     # settings are frozen during a run
    app.stop_button.click()
    res = app.wait(120)
    assert not app.running and res.interrupted and 2 <= res.steps_done < 300
    assert res.snapshots[-1][0] == res.steps_done                          # the partial x0 is kept
    assert "stopped" in app.status.value and not app.run_button.disabled and not app.w["clip_start"].disabled
    app.set(steps=app.setting.config.steps, t_star=app.setting.config.t_star)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error path of a CUDA setting without CUDA")
def test_run_error_is_reported_and_the_app_recovers(app):
    app.use_setting(explorer_setting("cuda"))
    assert (app.config.steps, app.batch_size, app.image_size) == (AttackConfig().steps, 30, 64)
    app.run_button.click(); app.wait(60)
    assert app.error is not None and app.result is None and "error" in app.status.value
    assert not app.run_button.disabled and not app.running
    assert app.device.value == "cuda"
    app.device.value = "cpu"                                                # the device choice switches the setting back
    assert (app.config.device, app.config.steps, app.batch_size) == ("cpu", AttackConfig.cpu_demo().steps, 8)
    assert list(app.device.options) == ["cpu"] and "CPU" in app.note.value


def test_schedule_plot_blits_without_full_redraws():
    c = AttackConfig.cpu_demo()
    p = SchedulePlot(*c.schedules(21))
    p.png(); n = p.full_draws
    for z in (1.2, 1.4, 1.6): p.update(*replace(c, clip_start=z).schedules(21)).png()
    assert p.full_draws == n                                                # data-only changes reuse the background
    p.update(*replace(c, steps=500).schedules(21)).png()
    assert p.full_draws == n + 1                                            # new x-limits redraw it


def test_only_the_explorer_imports_ipywidgets():
    pkg = Path(__file__).resolve().parents[1]/"diffula"
    users = sorted(f.name for f in pkg.glob("*.py") if re.search(r"^\s*(import|from)\s+ipywidgets", f.read_text(), re.M))
    assert users == ["explorer.py"]


def test_snapshots_scale_with_the_steps():
    ref = AttackConfig.cpu_demo()
    a = Explorer(user=0, device="cpu", steps=3)                             # an override of the starting steps
    assert a.config.steps == 3 and a.config.snapshot_every == 1
    a.set(steps=ref.steps)
    assert a.config.snapshot_every == ref.snapshot_every                    # the preset's snapshots per run
    a.set(steps=ref.steps//2)
    assert a.config.snapshot_every == max(1, round(ref.snapshot_every/2))
    assert Explorer(user=0, device="cpu", snapshot_every=7).set(steps=100).config.snapshot_every == 7
