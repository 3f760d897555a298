"""Does the demo leak? DiffULA over N SynthFaces users beside its prior-only control, on the same users and seeds.

For each user: `diffula.pipeline.run_case(Case.demo(user=u, ...))` — the exact pipeline of `diffula demo`, whatever
its settings are: the client gradient of a randomly initialised ResNet-18, DiffULA, then the shipped evaluators read
gender, race and age off the reconstruction, and the identity embedding compares it with the user's own batch and
with a random other user's batch. The control runs the same pipeline with the gradient-matching term switched off (gm_weight = 0): the same x0
and the same prior noise, so whatever it gets right comes from the prior and the seed alone, not from the gradient.

    python benchmarks/twenty_users.py                                  # users 0-19, both arms, 2 processes
    python benchmarks/twenty_users.py --first-user 40 --users 16       # users 40-55 (the users the demo was tuned on)
    python benchmarks/twenty_users.py --preset paper-cpu --json out/u64.json   # the paper's setting with the CPU levers
    python benchmarks/twenty_users.py --preset paper-cpu --set copies=null --set 'precision="fp32"' --set window_only=false  # without them
    python benchmarks/twenty_users.py --device cuda --jobs 1

Chance levels: gender 0.5, race 0.25 (4 balanced classes), age: the MAE of always answering the mean true age.
The paired sign test asks, user by user, whether the attack's similarity gap (own batch minus other user) beats the
control's (one-sided binomial test on the users where they differ). `--json` writes
{"arms": {"attack": {...}, "control": {...}}, "paired": {...}, "settings": {...}, "rows": {...}}.
"""
import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np

from diffula.pipeline import paired_summary  # noqa: E402  (one definition, stage 04b)


def one(args):
    "One user's case (run_case sets torch to one thread for the run); --set keys that are Case fields go to the case."
    user, seed, device, method, overrides, runs, preset = args
    from dataclasses import fields
    from diffula.case import Case
    from diffula.pipeline import run_case, run_cases
    names = {f.name for f in fields(Case)}
    case_kw = {k: v for k, v in overrides.items() if k in names}
    config = {k: v for k, v in overrides.items() if k not in names}
    case = Case.for_preset(preset, user=user, seed=seed, device=device, method=method, config=config, **case_kw)
    if runs: return run_cases([case], runs, progress=False)[0]   # stored under runs/<key>: reused by any later run
    return run_case(case, progress=False).metrics


def arm_summary(rows):
    "The per-arm numbers: the runner's leak summary (own batch vs another user, attributes against chance, face rate, budget), with the attack time per user."
    from diffula.pipeline import leak_summary
    return dict(leak_summary(rows), s_per_user=round(float(np.mean([r["timings"]["attack_s"] for r in rows])), 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=20, help="number of SynthFaces users (default 20)")
    ap.add_argument("--first-user", type=int, default=0, help="first user index: users first..first+N-1 (default 0)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model and the attacks, both arms (default 0)")
    ap.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the preset's)")
    ap.add_argument("--preset", default="cpu", help="cpu (the demo: 32 px, B = 8), paper-cpu (64 px, B = 30 with the "
                    "attack's CPU levers) or paper (default cpu)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--jobs", type=int, default=2, help="users run in parallel, one thread each (default 2)")
    ap.add_argument("--no-control", action="store_true", help="skip the prior-only control")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a Case field (image_size, batch_size, task_label, bn_mode, ...) or an AttackConfig field, e.g. --set restarts=2 (repeatable)")
    ap.add_argument("--json", default=None, help="write the arms, the paired tests, the settings and all rows here")
    ap.add_argument("--runs", default=None, help="store every case under this folder and reuse finished ones (resumable)")
    a = ap.parse_args(argv)
    base = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    if a.steps is not None: base["steps"] = a.steps
    arms = [("attack", "diffula")] + ([] if a.no_control else [("control", "control")])
    users = list(range(a.first_user, a.first_user + a.users))
    results, t0 = {}, time.time()
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        futs = {name: pool.map(one, [(u, a.seed, a.device, method, base, a.runs, a.preset) for u in users]) for name, method in arms}
        for name, _ in arms: results[name] = list(futs[name])
    wall = time.time() - t0
    settings = {k: v for k, v in results["attack"][0]["settings"].items() if k not in ("method", "seed")}
    print(f"users {users[0]}-{users[-1]}, seed {a.seed}, overrides {base}, device {a.device}, {wall:.0f} s in all")
    print(f"settings: {json.dumps(settings)}\n")
    print(f"{'user':>10s} {'arm':>8s} {'true g/r/age':>14s} {'inferred g/r/age':>17s} {'sim own':>8s} {'sim other':>9s}")
    for i in range(len(users)):
        for name, _ in arms:
            r = results[name][i]; t, f = r["true"], r["inferred"]
            print(f"{r['user']:>10s} {name:>8s} {t['gender']:>4d}/{t['race']}/{t['age']:5.1f} {f['gender']:>7d}/{f['race']}/{f['age']:5.1f}"
                  f" {r['similarity_to_batch']:8.3f} {r['similarity_to_other_user']:9.3f}")
    out = dict(arms={name: arm_summary(results[name]) for name, _ in arms}, settings=settings, overrides=base,
               users=users, seed=a.seed, device=a.device, wall_s=round(wall, 1))
    if not a.no_control: out["paired"] = paired_summary(results["attack"], results["control"])
    print("\nchance: gender 0.5, race 0.25, age MAE of answering the mean true age (age_mae_chance)")
    for name, s in out["arms"].items(): print(f"{name:>8s}: {json.dumps(s)}")
    if "paired" in out: print(f"  paired (attack > control): {json.dumps(out['paired'])}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f: json.dump({**out, "rows": results}, f, indent=1)
    return out


if __name__ == "__main__":
    main()
