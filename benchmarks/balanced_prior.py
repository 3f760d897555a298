"""The balanced prior: retrain the SynthFaces DDPM on a stratified stream for longer, then measure what it changes —
its samples' bias against the shipped prior's, and the attack's attributes with each prior, paired on the same users
and seeds, each beside its prior-only control.

Three steps, each resumable:

    # 1. train (on a GPU, a few minutes; on a CPU `--budget-s` buys proportionally fewer steps). The number of steps is
    #    set from the throughput measured in a short warm-up so that the run fits --budget-s; the cosine schedule spans
    #    exactly those steps. The folder is an ordinary diffusers prior (`load_prior("out/prior_balanced")`).
    python benchmarks/balanced_prior.py train --out out/prior_balanced --device cuda --budget-s 240 --workers 12

    # 2. the attack (DiffULA, demo setting) and its control with each prior, on the report users 0-19 and the tuning
    #    users 40-59, in that order; finished cases are stored under --runs and never rerun; --deadline-s stops
    #    starting new cases so that a device lease is not overrun
    python benchmarks/balanced_prior.py attacks --prior out/prior_balanced --runs out/balanced/runs --device cuda --jobs 8

    # 3. the report (CPU): sample bias of both priors (200 DDIM samples each, the evaluators' reading, as stage 01b's
    #    quality record), and per prior and user set: own > other, gender, race, age error ± se, paired sign tests
    #    balanced vs shipped and each attack vs its control
    python benchmarks/balanced_prior.py report --prior out/prior_balanced --runs out/balanced/runs --json out/balanced/report.json

Nothing is chosen in this benchmark: the attack's settings are the shipped demo's for both priors.
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np

ARMS = ("diffula", "control")
USER_SETS = {"report": list(range(0, 20)), "tuning": list(range(40, 60))}


def train(a):
    "Warm up to measure the rate, then train from scratch for the steps that fit the budget."
    import torch
    from diffula.synthprior import train_prior
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    out = Path(a.out); tmp = out.parent/(out.name + "_warmup")
    kw = dict(batch_size=a.batch_size, lr=a.lr, device=a.device, seed=a.seed, ema_decay=a.ema_decay,
              balanced=not a.unbalanced, workers=a.workers, log_every=50)
    state = Path(a.state) if a.state else out.parent/(out.name + "_state.pt")
    if not state.exists():  # a fresh run: measure the rate first (a resumed one keeps the steps it was given)
        t0 = time.time()
        train_prior(tmp, steps=a.warmup, save_every=10**9, resume=False, state_path=tmp/"s.pt", **kw)
        rate = a.warmup/(time.time() - t0)  # steps/s, start-up included: a safe estimate
        steps = a.steps or max(a.warmup, int(rate*a.budget_s))
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"warm-up: {rate:.1f} steps/s at batch {a.batch_size} -> {steps} steps", flush=True)
    else:
        steps = json.loads((out/"training.json").read_text())["steps"]
        print(f"resuming {state} towards {steps} steps", flush=True)
    t0 = time.time()
    train_prior(out, steps=steps, save_every=a.save_every, state_path=state, **kw)
    info = json.loads((out/"training.json").read_text())
    print(f"trained {info['steps_done']}/{steps} steps, {info['steps_done']*a.batch_size} images, "
          f"{time.time() - t0:.0f} s, last loss {info['losses'][-1]:.4f}", flush=True)


def _case(prior, method, user, device):
    from diffula.case import Case
    return Case.demo(user=user, method=method, prior=prior, device=device)


def _one(args):
    "One case through the runner unless the deadline has passed (then None)."
    prior, method, user, device, runs, deadline = args
    if time.time() > deadline: return None
    import torch
    torch.set_num_threads(2)
    from diffula.pipeline import run_cases
    try: return run_cases([_case(prior, method, user, device)], runs, progress=False)[0]
    except Exception:  # one failing case is reported, the others still run
        import traceback; traceback.print_exc(); return None


def attacks(a):
    "The arms with each prior on the report users, then the tuning users, until done or the deadline."
    from concurrent.futures import ProcessPoolExecutor
    deadline = time.time() + a.deadline_s
    todo = [(p, m, u, a.device, a.runs, deadline) for s in a.sets.split(",") for p in (a.prior, "synthfaces")
            for m in ARMS for u in USER_SETS[s]]
    import multiprocessing as mp
    ctx = mp.get_context("spawn")  # CUDA in workers: never fork a process that may hold a context
    done = 0
    with ProcessPoolExecutor(a.jobs, mp_context=ctx) as pool:
        for r in pool.map(_one, todo):
            done += r is not None
    print(f"{done}/{len(todo)} cases finished under {a.runs} ({len(todo) - done} left for a later call)", flush=True)


def _bias(prior_src, ev, n=200):
    "The evaluators' reading of n DDIM samples (50 steps, seed 1): stage 01b's quality record."
    import torch
    from diffula.prior import load_prior
    from diffula.synthprior import attribute_reading
    prior = load_prior(prior_src)
    xs = prior.from_prior(prior.sample(n, steps=50, generator=torch.Generator().manual_seed(1), batch_size=50)).clamp(0, 1)
    return dict(prior=str(prior_src), **attribute_reading(ev.predict(xs)))


def report(a):
    import torch
    from diffula.pipeline import attribute_score, sign_test, load_result
    from diffula.evaluation import mean_se
    from diffula.synthevals import Evaluators
    torch.set_num_threads(2)
    out = dict(bias=[], sets={}, device=a.device)
    ev = Evaluators.load()
    for src in ("synthfaces", a.prior): out["bias"].append(_bias(src, ev)); print(out["bias"][-1], flush=True)
    gap = lambda rs: [r["similarity_to_batch"] - r["similarity_to_other_user"] for r in rs]
    score = lambda rs: [attribute_score(r) for r in rs]
    for s in a.sets.split(","):
        rows = {}
        for p, name in ((a.prior, "balanced"), ("synthfaces", "shipped")):
            for m in ARMS:
                rs = [load_result(Path(a.runs)/_case(p, m, u, a.device).key(), _case(p, m, u, a.device))
                      for u in USER_SETS[s]]
                if any(r is None for r in rs):
                    print(f"{s}: {name} {m} has {sum(r is None for r in rs)} unfinished users; run `attacks` first")
                    break
                rows[f"{name}_{m}"] = rs
        if len(rows) < 4: continue
        f = lambda rs, k: [round(v, 3) for v in mean_se([r["metrics"][k] for r in rs])[:2]]
        summ = {k: dict(own_gt_other=sum(g > 0 for g in gap(rs)), gender=f(rs, "gender_correct"),
                        race=f(rs, "race_correct"), age_error=f(rs, "age_error"),
                        age_pred=round(float(np.mean([r["inferred"]["age"] for r in rs])), 1),
                        male_pred=round(float(np.mean([r["inferred"]["gender"] for r in rs])), 2))
                for k, rs in rows.items()}
        pairs = dict(balanced_vs_shipped=("balanced_diffula", "shipped_diffula"),
                     balanced_vs_control=("balanced_diffula", "balanced_control"),
                     shipped_vs_control=("shipped_diffula", "shipped_control"))
        tests = {k: dict(score=sign_test(score(rows[x]), score(rows[y])), gap=sign_test(gap(rows[x]), gap(rows[y])))
                 for k, (x, y) in pairs.items()}
        out["sets"][s] = dict(users=USER_SETS[s], arms=summ, tests=tests)
        print(f"\nusers {USER_SETS[s][0]}-{USER_SETS[s][-1]} ({s}), device {a.device}")
        print(f"{'arm':>18s} {'own>oth':>7s} {'gender':>11s} {'race':>11s} {'age err':>11s} {'age pred':>8s} {'male':>5s}")
        for k, v in summ.items():
            print(f"{k:>18s} {v['own_gt_other']:>4d}/{len(USER_SETS[s])} {v['gender'][0]:.2f}±{v['gender'][1]:.2f} "
                  f"{v['race'][0]:.2f}±{v['race'][1]:.2f} {v['age_error'][0]:5.1f}±{v['age_error'][1]:.1f} "
                  f"{v['age_pred']:8.1f} {v['male_pred']:5.2f}")
        for k, t in tests.items():
            print(f"{k}: score {t['score']['wins']}-{t['score']['losses']} p={t['score']['p_value']:.3f}, "
                  f"gap {t['gap']['wins']}-{t['gap']['losses']} p={t['gap']['p_value']:.3f}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the balanced prior (resumable)")
    t.add_argument("--out", default="out/prior_balanced"); t.add_argument("--state", default=None)
    t.add_argument("--device", default="cpu"); t.add_argument("--budget-s", type=float, default=240)
    t.add_argument("--steps", type=int, default=None, help="fix the steps instead of fitting them to --budget-s")
    t.add_argument("--warmup", type=int, default=40); t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=3e-4); t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--seed", type=int, default=0); t.add_argument("--workers", type=int, default=0)
    t.add_argument("--save-every", type=int, default=500)
    t.add_argument("--unbalanced", action="store_true", help="the independent stream of the shipped prior")
    for name in ("attacks", "report"):
        s = sub.add_parser(name)
        s.add_argument("--prior", default="out/prior_balanced"); s.add_argument("--runs", default="out/balanced/runs")
        s.add_argument("--device", default="cpu"); s.add_argument("--sets", default="report,tuning")
        if name == "attacks":
            s.add_argument("--jobs", type=int, default=2); s.add_argument("--deadline-s", type=float, default=1e9)
        else: s.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.cmd != "train" and not (Path(a.prior)/"unet").exists():
        ap.error(f"no prior at {a.prior}: train it first (`balanced_prior.py train --out {a.prior}`)")
    bad = [s for s in getattr(a, "sets", "report").split(",") if s not in USER_SETS]
    if bad: ap.error(f"unknown user sets {bad}; known: {', '.join(USER_SETS)}")
    return {"train": train, "attacks": attacks, "report": report}[a.cmd](a)


if __name__ == "__main__":
    main(sys.argv[1:])
