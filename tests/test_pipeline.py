"""Tests for the case runner that a notebook cannot hold: killed runs resume without recomputing, Ray matches local.

The two kill-and-resume tests are marked slow (about 20 s and 80 s on a quiet 2-core machine; they give up after 300 s
and 600 s without a finished case): `pytest --runslow` or DIFFULA_RUNSLOW=1 runs them, `make test-slow` (and CI) runs
only them (tests/conftest.py)."""
import os
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffula.case import Case
from diffula.pipeline import run_cases, load_result, table1

torch.set_num_threads(1)
SMOKE = dict(steps=2, t_star=10, denoise_method="ddim")
VOLATILE = ("timings", "budget", "environment")  # wall-clock numbers differ between runs; everything else must not


def _stable(r):
    r = {k: v for k, v in r.items() if k not in VOLATILE}
    r["method_config"] = {k: v for k, v in r["method_config"].items() if k != "progress"}
    return r


def _kill_after_first_case(argv, out, timeout=300):
    "Start the CLI in a subprocess, kill it (SIGKILL) as soon as one case has finished, return the finished files."
    p = subprocess.Popen([sys.executable, "-c", f"from diffula.cli import main; raise SystemExit(main({argv!r}))"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            done = list(Path(out).rglob("metrics.json"))
            if done or p.poll() is not None: break
            time.sleep(0.2)
    finally:
        os.killpg(p.pid, signal.SIGKILL); p.wait()
    return done


def _mtimes(out):
    return {p: p.stat().st_mtime_ns for p in Path(out).rglob("metrics.json")}


@pytest.mark.slow
def test_killed_table1_resumes_without_recomputing(tmp_path):
    out = tmp_path / "t"
    argv = ["table1", "--users", "3", "--steps", "2", "--t-star", "10", "--set", 'denoise_method="ddim"', "--out", str(out)]
    done = _kill_after_first_case(argv, out)
    assert 1 <= len(done) < 6, done                                   # killed mid-run
    before = _mtimes(out)
    assert not list(out.rglob("*.tmp"))                               # no half-written file is ever visible under its name
    res = table1(out, users=3, config=SMOKE, progress=False)
    assert all(p.stat().st_mtime_ns == m for p, m in before.items())  # finished cases were not run again
    assert len(_mtimes(out)) == 6 and len(res["results"]) == 6


def test_a_result_of_another_case_is_not_reused(tmp_path):
    c = Case(user=1, config=SMOKE)
    run_cases([c], tmp_path, progress=False)
    f = tmp_path / c.key() / "metrics.json"
    assert load_result(tmp_path / c.key(), c) is not None
    assert load_result(tmp_path / c.key(), Case(user=1, config=dict(SMOKE, steps=3))) is None
    f.write_text("{ truncated")
    assert load_result(tmp_path / c.key(), c) is None                 # unreadable -> run again
    run_cases([c], tmp_path, progress=False)
    assert load_result(tmp_path / c.key(), c) is not None


@pytest.mark.slow
def test_ray_executor_resumes_and_matches_local(tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    out = tmp_path / "ray"
    argv = ["table1", "--users", "2", "--executor", "ray", "--jobs", "2", "--steps", "2", "--t-star", "10",
            "--set", 'denoise_method="ddim"', "--out", str(out)]
    _kill_after_first_case(argv, out, timeout=600)
    before = _mtimes(out)
    cases = [Case(method=m, user=u, config=SMOKE) for m in ("diffula", "control") for u in range(2)]
    got = run_cases(cases, out, executor="ray", jobs=2, progress=False)
    assert all(p.stat().st_mtime_ns == m for p, m in before.items())
    local = run_cases(cases, tmp_path / "local", executor="local", progress=False)
    assert [_stable(a) for a in got] == [_stable(b) for b in local]   # identical results for the same seeds
    ray.shutdown()
