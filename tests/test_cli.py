"""Tests for the `diffula` command line: options documented, assets checked before any work, clear one-line errors."""
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import json
import subprocess
import sys
import time

import pytest
import torch

from diffula.cli import build_parser, load_user, main, run_attack
from diffula.data import make_celeba_fixture

torch.set_num_threads(1)


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e: main(["attack", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--data", "--user", "--batch-size", "--prior", "--steps", "--device", "--out", "--image-size", "--prior-grad"):
        assert opt in out, opt
    with pytest.raises(SystemExit) as e: main(["demo", "--help"])
    assert e.value.code == 0 and "--user" in capsys.readouterr().out


def test_defaults_are_the_papers():
    a = build_parser().parse_args(["attack"])
    assert (a.batch_size, a.steps, a.image_size, a.t_star, a.data) == (30, 4000, 64, 200, "synthfaces")


@pytest.mark.parametrize("argv, needle", [
    (["attack", "--prior", "/nonexistent/ffhq.pt"], "/nonexistent/ffhq.pt"),
    (["attack", "--prior", "google/ddpm-ema-celebahq-256"], "google/ddpm-ema-celebahq-256"),
    (["attack", "--data", "celeba:/nonexistent/celeba", "--steps", "1"], "/nonexistent/celeba"),
    (["attack", "--data", "imagenet", "--steps", "1"], "--data must be"),
    (["attack", "--steps", "0"], "steps"),
])
def test_missing_assets_fail_fast(argv, needle, tmp_path, capsys):
    t0 = time.perf_counter()
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_absent(tmp_path, capsys):
    assert main(["attack", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_load_user_sources(tmp_path):
    u = load_user("synthfaces", user=3, batch_size=5, size=32)
    assert u.images.shape == (5, 3, 32, 32) and u.user_id == "synth0-3" and u.attributes["race"] in range(4)
    root = make_celeba_fixture(tmp_path / "celeba", {7: 6, 8: 2, 9: 6})
    u = load_user(f"celeba:{tmp_path / 'celeba'}", user=1, batch_size=4)
    assert u.user_id == "9" and u.images.shape == (4, 3, 64, 64)   # identity 8 has too few images
    with pytest.raises(ValueError, match="only 2 users"): load_user(f"celeba:{tmp_path / 'celeba'}", user=2, batch_size=4)
    (tmp_path / "folder" / "alice").mkdir(parents=True)
    with pytest.raises(ValueError, match="--data must be"): load_user("folder:")


def test_attack_writes_its_files(tmp_path):
    m = run_attack("synthfaces", user=1, batch_size=4, steps=3, image_size=32, t_star=10, out=tmp_path, progress=False,
                   prior_grad="jacobian_free")
    assert {p.name for p in tmp_path.iterdir()} >= {"reconstruction.png", "history.png", "result.pt", "metrics.json"}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 3 and saved["labels_recovered"] == m["labels_recovered"] and sum(m["labels_true"]) == 4
    assert set(saved["true"]) == {"gender", "race", "age"} and -1 <= saved["similarity_to_batch"] <= 1
    r = torch.load(tmp_path / "result.pt", weights_only=False)
    assert r["x_final"].shape == (1, 3, 32, 32) and len(r["history"]["step"]) == 3


def test_console_script_entry_point():
    p = subprocess.run([sys.executable, "-c", "from diffula.cli import main; raise SystemExit(main(['attack', '--prior', 'nope.pt']))"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "nope.pt" in p.stderr
