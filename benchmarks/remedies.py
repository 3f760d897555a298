"""What lowers the fall-back rate? Named variants of the attack on the tuning users, each beside the shipped attack and
its prior-only control on the same users and seeds.

A variant is a method and overrides of its config (`VARIANTS`). For each user and variant the case runner
(`diffula.pipeline.run_cases`, resumable under --runs) runs the attack; the benchmark then reads, per variant:

- own > other: the reconstruction nearer the user's batch than another user's (identity similarity);
- the failure rate (the definition of stage 05's fall-back study): the reconstruction below another user's
  similarity, or nearer the shipped control's image (the prior's mode face for that seed) than the user's batch;
- gender, race (accuracy) and age error (mean ± se);
- paired sign tests (one-sided, users where they differ) on the attribute score (gender + race − age error/10) and
  the similarity gap, against the shipped attack, against the variant's control (`control`, or `dps_control` for
  the DPS variant) and, when `gias` is among the variants, against GIAS.

    python benchmarks/remedies.py                                     # users 40-59 (tuning), every variant, 2 processes
    python benchmarks/remedies.py --variants shipped,clip_late,dps_0.03 --users 8
    python benchmarks/remedies.py --first-user 0 --variants shipped,dps_0.03,gias   # report on users 0-19, once chosen

Choose on users 40-59; report on users 0-19 only what was chosen there.
"""
import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np

# name -> (method, config overrides, what it tests); the shipped demo attack is "shipped"
VARIANTS = {
    "shipped": ("diffula", {}, "the demo's attack as shipped"),
    "control": ("control", {}, "its prior-only control (gm_weight = 0)"),
    "diffula_ensemble": ("diffula_ensemble", {}, "the shipped attack read over K draws around x_opt (pipeline.ENSEMBLE)"),
    "dps": ("dps", {}, "the DPS variant at its default ζ_g (DPSConfig)"),
    "clip_late": ("diffula", {"clip_end": 1.5}, "ζ stays at 1.5: the matching term is not weakened late"),
    "tau_high": ("diffula", {"t_end": 700}, "a higher τ_end: the prior acts at higher noise to the end"),
    "no_jitter": ("diffula", {"p_jitter": 0.0}, "no colour jitter in T: skin tone and brightness are not made invariant"),
    "restarts3": ("diffula", {"restarts": 3}, "three restarts, the one whose image best explains ∇w kept (3× the cost)"),
    "restarts3_vote": ("diffula", {"restarts": 3, "posterior_samples": 3, "posterior_source": "restarts"},
                       "three restarts, all three final images read with the batch-ensemble rule (3× the cost)"),
    "dps_0.03": ("dps", {"guidance": 0.03}, "the DPS variant, ζ_g = 0.03"),
    "dps_0.1": ("dps", {"guidance": 0.1}, "the DPS variant, ζ_g = 0.1"),
    "dps_0.3": ("dps", {"guidance": 0.3}, "the DPS variant, ζ_g = 0.3"),
    "dps_control": ("dps_control", {}, "the DPS chain with the guidance off (the prior's unconditional sample)"),
    "gias": ("gias", {}, "GIAS (stage 03a), B images read with the batch-ensemble rule"),
    "ig": ("ig", {}, "Inverting Gradients (stage 03a), B images read with the batch-ensemble rule"),
}


def one(args):
    "One case through the runner (stored under runs/<key>, reused when finished)."
    method, config, user, preset, runs = args
    from diffula.case import Case
    from diffula.pipeline import run_cases
    return run_cases([Case.for_preset(preset, user=user, method=method, config=config)], runs, progress=False)[0]


def images(runs, r):
    "A finished case's reconstruction(s), from its result.pt."
    import torch
    return torch.load(os.path.join(runs, r["key"], "result.pt"), weights_only=False)["images"]


def failures(runs, rows, control_rows, preset):
    "Per user: below another user's similarity, or nearer the control's image than the user's batch."
    from diffula.case import Case
    from diffula.pipeline import load_users, make_evaluator
    ev, out = make_evaluator("synthfaces"), []
    for r, c in zip(rows, control_rows):
        user, _ = load_users(Case.for_preset(preset, user=r["case"]["user"]))
        x, mode = images(runs, r), images(runs, c)
        own = float(ev.similarity(x, user.images).mean())
        to_mode = float(ev.similarity(x, mode).mean())
        out.append(bool(own < r["similarity_to_other_user"] or to_mode > own))
    return out


def summary(rows, fails):
    from diffula.evaluation import mean_se
    f = lambda key: [round(v, 3) for v in mean_se([r["metrics"][key] for r in rows])[:2]]
    return dict(users=len(rows), own_gt_other=sum(r["similarity_to_batch"] > r["similarity_to_other_user"] for r in rows),
                failures=int(sum(fails)), gap=round(float(np.mean([r["similarity_to_batch"] - r["similarity_to_other_user"]
                                                                  for r in rows])), 3),
                gender=f("gender_correct"), race=f("race_correct"), age_error=f("age_error"),
                s_per_user=round(float(np.mean([r["timings"]["attack_s"] for r in rows])), 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=20, help="number of users (default 20)")
    ap.add_argument("--first-user", type=int, default=40, help="first user (default 40: the tuning users)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--preset", default="cpu", help="cpu (demo: 32 px, B = 8) or paper-cpu (default cpu)")
    ap.add_argument("--jobs", type=int, default=2, help="cases run in parallel, one thread each (default 2)")
    ap.add_argument("--runs", default="out/remedies/runs", help="where every case is stored and reused")
    ap.add_argument("--json", default=None, help="write the summaries, the tests and the per-user rows here")
    a = ap.parse_args(argv)
    names = [v for v in a.variants.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad: ap.error(f"unknown variants {bad}; known: {', '.join(VARIANTS)}")
    need = list(dict.fromkeys(["shipped", "control"] + (["dps_control"] if any(VARIANTS[v][0] == "dps" for v in names)
                                                         else []) + names))
    users = list(range(a.first_user, a.first_user + a.users))
    from concurrent.futures import ProcessPoolExecutor
    from diffula.pipeline import attribute_score, sign_test
    t0, rows = time.time(), {}
    with ProcessPoolExecutor(max_workers=a.jobs) as pool:
        futs = {v: pool.map(one, [(VARIANTS[v][0], VARIANTS[v][1], u, a.preset, a.runs) for u in users]) for v in need}
        for v in need: rows[v] = list(futs[v])
    out = dict(users=users, preset=a.preset, variants={}, wall_s=round(time.time() - t0, 1))
    gap = lambda rs: [r["similarity_to_batch"] - r["similarity_to_other_user"] for r in rs]
    score = lambda rs: [attribute_score(r) for r in rs]
    for v in need:
        ctl = "dps_control" if VARIANTS[v][0].startswith("dps") else "control"
        fails = failures(a.runs, rows[v], rows["control"], a.preset)
        s = dict(summary(rows[v], fails), what=VARIANTS[v][2], config=VARIANTS[v][1], method=VARIANTS[v][0])
        if v not in ("shipped", ctl):
            s["vs_shipped"] = dict(score=sign_test(score(rows[v]), score(rows["shipped"])),
                                   gap=sign_test(gap(rows[v]), gap(rows["shipped"])))
        if "gias" in rows and v not in ("gias", ctl):
            s["vs_gias"] = dict(score=sign_test(score(rows[v]), score(rows["gias"])),
                                gap=sign_test(gap(rows[v]), gap(rows["gias"])))
        if v != ctl:
            s["vs_control"] = dict(control=ctl, score=sign_test(score(rows[v]), score(rows[ctl])),
                                   gap=sign_test(gap(rows[v]), gap(rows[ctl])))
        s["per_user"] = dict(fails=fails, score=[round(x, 3) for x in score(rows[v])],
                             gap=[round(x, 3) for x in gap(rows[v])])
        out["variants"][v] = s
    print(f"users {users[0]}-{users[-1]}, preset {a.preset}, {out['wall_s']:.0f} s")
    print(f"{'variant':>12s} {'own>oth':>7s} {'fail':>4s} {'gap':>6s} {'gender':>12s} {'race':>12s} {'age err':>12s} "
          f"{'s/user':>6s}  score vs shipped / vs control / vs GIAS (wins-losses, p)")
    for v, s in out["variants"].items():
        t = lambda k: (f"{s[k]['score']['wins']}-{s[k]['score']['losses']} p={s[k]['score']['p_value']:.3f}" if k in s else "-")
        print(f"{v:>12s} {s['own_gt_other']:>4d}/{s['users']:<2d} {s['failures']:>4d} {s['gap']:6.3f} "
              f"{s['gender'][0]:.2f}±{s['gender'][1]:.2f}  {s['race'][0]:.2f}±{s['race'][1]:.2f}  "
              f"{s['age_error'][0]:5.1f}±{s['age_error'][1]:.1f}  {s['s_per_user']:6.1f}  {t('vs_shipped')} / {t('vs_control')} / {t('vs_gias')}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f: json.dump({**out, "rows": rows}, f, indent=1)
    return out


if __name__ == "__main__":
    main()
