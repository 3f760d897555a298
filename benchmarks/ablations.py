"""What makes the demo leak: each knob of the attack changed alone, on users the demo was NOT evaluated on.

Every variant is the demo's case (`Case.demo()`: 32 px, B = 8, identity labels, eval-mode BatchNorm, DiffULA's CPU
preset) with one setting changed, run on the same users and seeds; the prior-only control is run once (it does not
depend on the attack's knobs, except where a variant changes the case itself, e.g. the BatchNorm mode or the labels,
and then it is run again). The default users, 40-47, are disjoint from the users 0-19 of the 20-user benchmark.

    python benchmarks/ablations.py                              # every variant, users 40-47, 2 processes
    python benchmarks/ablations.py --variants demo,gm1,steps240 --json out/ablations.json
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from twenty_users import one, arm_summary, sign_test  # noqa: E402

VARIANTS = {  # name: (what changes, overrides of Case fields or AttackConfig fields)
    "demo": ("the demo as shipped", {}),
    "gm1": ("gm_weight 1 (Eq. 14 without a weight: the clip never binds)", {"gm_weight": 1.0}),
    "steps240": ("240 steps, η = 5", {"steps": 240, "lr": 5.0}),
    "full_gp": ("full-Jacobian prior gradient", {"prior_grad": "full"}),
    "restarts2": ("2 restarts, the better by gradient distance", {"restarts": 2}),
    "zeta2x": ("ζ from 3 to 2 (twice the paper's)", {"clip_start": 3.0, "clip_end": 2.0}),
    "no_window": ("no layer window (every layer weighted 1 throughout)", {"window_shallow": 100.0, "window_deep": 100.0, "window_alpha": 1.0}),
    "layer_cosine": ("per-layer cosine distance", {"distance": "layer_cosine"}),
    "bn_train": ("BatchNorm in training mode (client and attacker)", {"bn_mode": "train"}),
    "expression": ("expression-driven task labels (mixed labels per user)", {"task_label": "expression"}),
}
CASE_LEVEL = {"bn_mode", "task_label", "image_size", "batch_size"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--first-user", type=int, default=40, help="first user (default 40)")
    ap.add_argument("--users", type=int, default=8, help="number of users (default 8)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--runs", default=None, help="store every case under this folder and reuse finished ones (resumable)")
    a = ap.parse_args(argv)
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad: ap.error(f"unknown variants {bad}")
    users = list(range(a.first_user, a.first_user + a.users))
    jobs, t0 = [], time.time()
    controls = {}
    for n in names:
        ov = VARIANTS[n][1]
        ckey = json.dumps({k: v for k, v in ov.items() if k in CASE_LEVEL}, sort_keys=True)
        jobs += [(n, "diffula", u, ov) for u in users]
        if ckey not in controls:
            controls[ckey] = n; jobs += [(f"control[{n}]", "control", u, ov) for u in users]
    with ProcessPoolExecutor(a.jobs) as pool:
        out = list(pool.map(one, [(u, a.seed, "cpu", m, ov, a.runs) for _, m, u, ov in jobs]))
    rows = {}
    for (name, _, _, _), r in zip(jobs, out): rows.setdefault(name, []).append(r)
    table = []
    for n in names:
        ov = VARIANTS[n][1]
        ctl = rows[f"control[{controls[json.dumps({k: v for k, v in ov.items() if k in CASE_LEVEL}, sort_keys=True)]}]"]
        s = arm_summary(rows[n]); c = arm_summary(ctl)
        gap = lambda rs: [r["similarity_to_batch"] - r["similarity_to_other_user"] for r in rs]
        table.append(dict(variant=n, change=VARIANTS[n][0], **{k: s[k] for k in ("own_gt_other", "similarity_own", "gender_acc",
                     "race_acc", "age_mae", "face_rate", "s_per_user")}, control_own_gt_other=c["own_gt_other"],
                          control_race=c["race_acc"], control_age_mae=c["age_mae"], paired_gap=sign_test(gap(rows[n]), gap(ctl))))
    print(f"users {users[0]}-{users[-1]}, seed {a.seed}, {time.time() - t0:.0f} s\n")
    print("| variant | change | own > other | own sim | gender | race | age MAE | face | s/user | control own>other / race / age | sign test p |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in table:
        print(f"| {t['variant']} | {t['change']} | {t['own_gt_other']}/{len(users)} | {t['similarity_own']:.2f} | {t['gender_acc']:.2f} | "
              f"{t['race_acc']:.2f} | {t['age_mae']:.1f} | {t['face_rate']:.2f} | {t['s_per_user']:.0f} | "
              f"{t['control_own_gt_other']}/{len(users)} / {t['control_race']:.2f} / {t['control_age_mae']:.1f} | {t['paired_gap']['p_value']:.3f} |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f: json.dump(dict(users=users, seed=a.seed, table=table, rows=rows), f, indent=1)
    return table


if __name__ == "__main__":
    main()
