"""Does the embedded demo leak private attributes? The DiffULA demo over N SynthFaces users, side by side with a
prior-only control on the same seeds.

For each user: the client gradient of a randomly initialised ResNet-18 → `diffula.attack.run_demo` (the exact
pipeline of `diffula demo`) → the shipped evaluators read gender, race and age off the reconstruction, and the
identity embedding compares it with the user's own batch and with a random other user's batch. The control runs
the same pipeline with the gradient-matching term switched off (gm_weight = 0), so whatever it gets right comes
from the prior and the seed alone, not from the gradient.

    python benchmarks/twenty_users.py                       # 20 users, the demo's defaults, 2 processes
    python benchmarks/twenty_users.py --users 20 --jobs 16  # on a 16-core machine
    python benchmarks/twenty_users.py --device cuda --jobs 1

Chance levels: gender 0.5, race 0.25 (4 balanced classes), age: the MAE of always answering the mean true age.
Prints one row per user, then the summary; `--out` also writes every row as JSON.
"""
import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np


def one(args):
    "One user's demo (run_demo sets torch to one thread for the run)."
    user, seed, device, overrides = args
    from diffula.attack import run_demo
    return run_demo(user=user, seed=seed, device=device, progress=False, **overrides)


def summary(rows, name):
    g = np.mean([r["gender_correct"] for r in rows]); rc = np.mean([r["race_correct"] for r in rows])
    ages = np.array([r["true"]["age"] for r in rows]); mae = np.mean([r["age_error"] for r in rows])
    own = np.array([r["similarity_to_batch"] for r in rows]); oth = np.array([r["similarity_to_other_user"] for r in rows])
    face = np.mean([r["inferred"]["face_prob"] > 0.5 for r in rows])
    return dict(name=name, n=len(rows), gender_acc=round(g, 3), race_acc=round(rc, 3), age_mae=round(mae, 2),
                age_mae_chance=round(float(np.abs(ages - ages.mean()).mean()), 2),
                sim_own=round(float(own.mean()), 3), sim_other=round(float(oth.mean()), 3),
                own_beats_other=round(float((own > oth).mean()), 3), face_rate=round(float(face), 3),
                s_per_user=round(float(np.mean([r["wall_time_s"] for r in rows])), 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=20, help="number of SynthFaces users, 0..N-1 (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model and the attacks (default 0)")
    ap.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the demo's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--jobs", type=int, default=2, help="users run in parallel, one thread each (default 2)")
    ap.add_argument("--no-control", action="store_true", help="skip the prior-only control")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a run_demo keyword or AttackConfig field, e.g. --set gm_weight=100 (repeatable)")
    ap.add_argument("--out", default=None, help="write all rows and summaries to this JSON file")
    a = ap.parse_args(argv)
    base = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    if a.steps is not None: base["steps"] = a.steps
    arms = [("DiffULA", base)] + ([] if a.no_control else [("prior only", {**base, "gm_weight": 0.0})])
    results, t0 = {}, time.time()
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        futs = {name: pool.map(one, [(u, a.seed, a.device, ov) for u in range(a.users)]) for name, ov in arms}
        for name, _ in arms:
            results[name] = list(futs[name])
    print(f"{a.users} SynthFaces users, seed {a.seed}, overrides {base}, device {a.device}, {time.time() - t0:.0f} s in all\n")
    print(f"{'user':>10s} {'arm':>10s} {'true g/r/age':>14s} {'inferred g/r/age':>17s} {'sim own':>8s} {'sim other':>9s}")
    for i in range(a.users):
        for name, _ in arms:
            r = results[name][i]; t, f = r["true"], r["inferred"]
            print(f"{r['user']:>10s} {name:>10s} {t['gender']:>4d}/{t['race']}/{t['age']:5.1f} {f['gender']:>7d}/{f['race']}/{f['age']:5.1f}"
                  f" {r['similarity_to_batch']:8.3f} {r['similarity_to_other_user']:9.3f}")
    sums = [summary(results[name], name) for name, _ in arms]
    print("\nchance: gender 0.5, race 0.25, age MAE of answering the mean true age (column age_mae_chance)")
    for s in sums: print(json.dumps(s))
    if a.out:
        with open(a.out, "w") as f: json.dump(dict(rows=results, summary=sums, overrides=base, users=a.users, seed=a.seed), f, indent=1)


if __name__ == "__main__":
    main()
