"""Tests for the `diffula` command line: options documented, no torch until the options are sound, impossible values
refused by the parser, assets checked before any work, one-line errors, one schema, the installed console script."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffula.case import METHOD_NAMES
from diffula.cli import build_parser, case_from_args, main
from diffula.data import make_celeba_fixture

torch.set_num_threads(1)
SMOKE = ["--steps", "2", "--t-star", "10", "--set", 'denoise_method="ddim"']


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e: main(["attack", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--data", "--user", "--batch-size", "--prior", "--steps", "--device", "--out", "--image-size", "--prior-grad",
                "--bn-mode", "--gm-weight", "--restarts", "--method", "--task-label", "--set", *METHOD_NAMES):
        assert opt in out, opt
    assert "--label-kind" not in out                          # one name for the task label, no alias
    for cmd, opt in (("demo", "--control"), ("table1", "--executor"), ("table1", "gias")):
        with pytest.raises(SystemExit) as e: main([cmd, "--help"])
        assert e.value.code == 0 and opt in capsys.readouterr().out


def test_importing_the_cli_and_its_errors_load_no_torch():
    probe = ("import sys, contextlib, io\n"
             "import diffula.cli\n"
             "assert 'torch' not in sys.modules, 'import diffula.cli imported torch'\n"
             "for argv in (['--help'], ['attack', '--help'], ['table1', '--users', '0'], ['attack', '--label-kind', 'x']):\n"
             "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
             "        try: diffula.cli.main(argv)\n"
             "        except SystemExit: pass\n"
             "    assert 'torch' not in sys.modules, argv\n")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_task_label_is_the_one_name():
    a = build_parser().parse_args(["attack", "--task-label", "expression"])
    assert a.task_label == "expression" and not hasattr(a, "label_kind")
    assert build_parser().parse_args(["table1"]).task_label == "identity"    # the demo's
    with pytest.raises(SystemExit) as e: build_parser().parse_args(["attack", "--label-kind", "expression"])
    assert e.value.code == 2


@pytest.mark.parametrize("argv, msg", [
    (["table1", "--users", "0"], "argument --users: must be at least 1, got 0"),
    (["table1", "--users", "-4"], "argument --users: must be at least 1, got -4"),
    (["table1", "--users", "two"], "argument --users: expected an integer, got 'two'"),
    (["table1", "--first-user", "-1"], "argument --first-user: must be at least 0, got -1"),
    (["table1", "--jobs", "0"], "argument --jobs: must be at least 1, got 0"),
    (["figures", "--jobs", "0"], "argument --jobs: must be at least 1, got 0"),
    (["attack", "--user", "-1"], "argument --user: must be at least 0, got -1"),
    (["demo", "--user", "-1"], "argument --user: must be at least 0, got -1"),
])
def test_impossible_ranges_are_usage_errors(argv, msg, tmp_path, capsys):
    with pytest.raises(SystemExit) as e: main(argv + ["--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0] == f"diffula {argv[0]}: error: {msg}", err
    assert "NaN" not in err and not (tmp_path / "o").exists()


def test_defaults():
    "Sizes follow the preset unless given: attack defaults to the paper's case, table1 to the demo's."
    a = build_parser().parse_args(["attack"])
    assert (a.preset, a.data, a.bn_mode) == ("paper", "synthfaces", "eval")
    assert (case_from_args(a).batch_size, case_from_args(a).image_size) == (30, 64)
    t = build_parser().parse_args(["table1"])
    assert (t.preset, t.users, t.methods) == ("cpu", 20, "diffula,control")
    assert (case_from_args(t).batch_size, case_from_args(t).image_size) == (8, 32)
    p = case_from_args(build_parser().parse_args(["table1", "--preset", "paper-cpu"]))
    assert (p.batch_size, p.image_size, p.preset) == (30, 64, "paper-cpu")
    s = case_from_args(build_parser().parse_args(["attack", "--preset", "paper-cpu", "--batch-size", "12"]))
    assert (s.batch_size, s.image_size) == (12, 64)


def test_todays_step_from_the_command_line():
    "The issue's command line gives today's step at 64 px, B = 30: every lever off."
    from diffula.pipeline import diffula_config
    argv = ["attack", "--preset", "cpu", "--image-size", "64", "--batch-size", "30", "--set", "copies=30",
            "--set", 'precision="fp32"', "--set", "window_only=false"]
    c = case_from_args(build_parser().parse_args(argv))
    cfg = diffula_config(c)
    assert (c.image_size, c.batch_size, cfg.copies, cfg.precision, cfg.window_only) == (64, 30, 30, "fp32", False)
    lev = diffula_config(case_from_args(build_parser().parse_args(["attack", "--preset", "paper-cpu"])))
    assert (lev.copies, lev.precision, lev.window_only) == (8, "bf16", True)


@pytest.mark.parametrize("argv, needle", [
    (["attack", "--prior", "/nonexistent/ffhq.pt"], "/nonexistent/ffhq.pt"),
    (["attack", "--prior", "google/ddpm-ema-celebahq-256"], "google/ddpm-ema-celebahq-256"),
    (["attack", "--data", "celeba:/nonexistent/celeba", "--steps", "1"], "/nonexistent/celeba"),
    (["attack", "--data", "imagenet", "--steps", "1"], "data must be"),
    (["attack", "--steps", "0"], "steps"),
    (["attack", "--method", "nope"], "unknown method"),
    (["table1", "--methods", "diffula,nope", "--users", "1"], "unknown method"),
    (["table1", "--methods", ",", "--users", "1"], "names no method"),
])
def test_bad_input_fails_fast(argv, needle, tmp_path, capsys):
    t0 = time.perf_counter()
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert time.perf_counter() - t0 < 60 and not list(tmp_path.rglob("metrics.json"))


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "ffhq.pt"; bad.write_bytes(b"this is not a checkpoint")
    assert main(["attack", "--prior", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("\n") == 1, err


def test_unwritable_out_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"; blocker.write_text("x")
    t0 = time.perf_counter()
    assert main(["attack", "--out", str(blocker / "sub")] + SMOKE) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err and time.perf_counter() - t0 < 30


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_absent(tmp_path, capsys):
    assert main(["attack", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_demo_attack_and_table1_write_one_schema(tmp_path, capsys):
    assert main(["demo", "--user", "1", "--steps", "2", "--out", str(tmp_path / "demo")]) == 0
    assert main(["attack", "--user", "1", "--batch-size", "8", "--image-size", "32", "--preset", "cpu", "--out",
                 str(tmp_path / "attack")] + SMOKE) == 0
    assert main(["table1", "--users", "1", "--first-user", "1", "--out", str(tmp_path / "t")] + SMOKE) == 0
    demo = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    att = json.loads((tmp_path / "attack" / "metrics.json").read_text())
    tab = [json.loads(p.read_text()) for p in (tmp_path / "t").rglob("metrics.json")]
    assert len(tab) == 2
    for other in [att] + tab:
        assert set(other) == set(demo) and set(other["metrics"]) == set(demo["metrics"])
        assert set(other["settings"]) == set(demo["settings"]) and set(other["budget"]) >= {"steps", "wall_s"}
    for key in ("bn_mode", "gm_weight", "image_size", "batch_size", "task_label"): assert key in demo["settings"]
    assert {"similarity_to_batch", "similarity_to_other_user"} <= set(demo)
    assert (tmp_path / "demo" / "reconstruction.png").stat().st_size > 1000
    assert (tmp_path / "t" / "table1.md").exists() and "leak and budget" in (tmp_path / "t" / "table1.md").read_text()


def test_celeba_users_through_the_cli(tmp_path, capsys):
    make_celeba_fixture(tmp_path / "celeba", {7: 6, 8: 2, 9: 6})
    argv = ["attack", "--data", f"celeba:{tmp_path / 'celeba'}", "--batch-size", "4", "--image-size", "32", "--preset", "cpu"]
    assert main(argv + ["--user", "1", "--out", str(tmp_path / "a")] + SMOKE) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["user"] == "9" and m["settings"]["data"].startswith("celeba:")   # identity 8 has too few images
    assert m["metrics"]["truth_source"] == "batch"                            # CelebA's truth: the batch's own reading
    assert main(argv + ["--user", "2", "--out", str(tmp_path / "b")] + SMOKE) == 2
    assert "only 2 users" in capsys.readouterr().err


def _installed_script() -> str:
    "The `diffula` executable that pip installed beside this interpreter (else on PATH)."
    exe = Path(sys.executable).with_name("diffula")
    exe = str(exe) if exe.exists() else shutil.which("diffula")
    if exe is None: pytest.fail("no `diffula` console script: install the project (pip install -e .)")
    return exe


def test_installed_console_script(tmp_path):
    exe = _installed_script()
    (tmp_path / "torch").mkdir()                              # a torch that cannot be imported: the answers below need none
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('diffula imported torch')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    run = lambda *argv: subprocess.run([exe, *argv], capture_output=True, text=True, timeout=120, env=env)
    h = run("--help")
    assert h.returncode == 0 and all(c in h.stdout for c in ("demo", "attack", "table1", "figures")), h.stderr
    h = run("attack", "--help")
    assert h.returncode == 0 and all(m in h.stdout for m in METHOD_NAMES) and "--task-label" in h.stdout, h.stderr
    e = run("table1", "--users", "0", "--out", str(tmp_path / "t"))
    assert e.returncode == 2 and e.stderr.strip().splitlines()[-1] == \
        "diffula table1: error: argument --users: must be at least 1, got 0", e.stderr
    assert not (tmp_path / "t").exists()
    e = subprocess.run([exe, "attack", "--prior", "nope.pt", "--out", str(tmp_path / "a")],   # the real torch: main's
                       capture_output=True, text=True, timeout=300)                           # one-line asset error
    last = e.stderr.strip().splitlines()[-1]
    assert e.returncode == 2 and last.startswith("diffula attack: error:") and "nope.pt" in last, e.stderr


def test_defence_flag_builds_the_case_and_a_bad_spec_fails_before_torch():
    from diffula.cli import case_from_args
    a = build_parser().parse_args(["attack", "--defence", "prune:p=0.9"])
    assert case_from_args(a).defence == "prune:p=0.9" and build_parser().parse_args(["attack"]).defence == "fedsgd"
    code = ("import sys; from diffula.cli import main; rc = main(['attack', '--defence', 'dp:sigma=-1']); "
            "assert 'torch' not in sys.modules; raise SystemExit(rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 2 and "sigma must be >= 0" in p.stderr.strip().splitlines()[-1]


def test_table1_compares_any_methods_on_chosen_users(tmp_path, capsys):
    "Issue 21: --first-user and any registered methods (the DPS variant and its control here) land in table1.json."
    assert main(["table1", "--users", "2", "--first-user", "3", "--methods", "dps,dps_control", "--steps", "3",
                 "--out", str(tmp_path / "t")]) == 0
    s = json.loads((tmp_path / "t" / "table1.json").read_text())
    assert s["users"] == [3, 4] and s["methods"] == ["dps", "dps_control"]
    for m in ("dps", "dps_control"):
        agg = s["aggregate"][m]
        for k in ("gender_correct", "race_correct", "age_error"): assert agg[k][2] == 2, (m, k, agg[k])   # n users
    runs = [json.loads(p.read_text()) for p in (tmp_path / "t").rglob("metrics.json")]
    assert sorted(r["settings"]["method"] for r in runs) == ["dps", "dps", "dps_control", "dps_control"]
    assert all(r["method_config"]["steps"] == 3 for r in runs)
