"""The signal ceiling: does a user's averaged gradient single out that user among faces? (`diffula.retrieval`)

For each setting (image size, B, task-label kind, BatchNorm mode) and N SynthFaces users: every user's observed
gradient against every user's held-out image, replicated into A(x) with the attack's own augmentation and the labels
recovered from the gradient; the rank of the user's own image among the N by cosine distance (0 = nearest; chance
(N-1)/2). A mean rank near chance says the gradient holds no user signal; well below it, that an attack has
something to climb.

    python benchmarks/signal_ceiling.py                         # the issue's table: 20 users, both BatchNorm modes
    python benchmarks/signal_ceiling.py --quick                 # 32 px, B = 8 only
    python benchmarks/signal_ceiling.py --users 20 --first-user 40 --json out/ceiling.json
"""
import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def one(kw):
    import torch
    torch.set_num_threads(1)
    from diffula.retrieval import retrieval_table
    t0 = time.time()
    s = retrieval_table([kw], progress=False)[0]  # a setting that cannot run comes back as a row with a `note`
    s["wall_s"] = round(time.time() - t0, 1)
    return s


def settings(quick):
    rows = [dict(image_size=32, batch_size=8, task_label="expression"), dict(image_size=32, batch_size=8, task_label="identity")]
    if not quick:
        rows += [dict(image_size=32, batch_size=1, task_label="identity"),
                 dict(image_size=32, batch_size=30, task_label="identity"), dict(image_size=64, batch_size=30, task_label="identity"),
                 dict(image_size=64, batch_size=30, task_label="expression"), dict(image_size=64, batch_size=8, task_label="identity")]
    return [dict(r, bn_mode=m) for r in rows for m in ("eval", "train")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=20, help="users per setting (default 20)")
    ap.add_argument("--first-user", type=int, default=0, help="first SynthFaces user (default 0)")
    ap.add_argument("--draws", type=int, default=2, help="augmentation draws per candidate (default 2)")
    ap.add_argument("--quick", action="store_true", help="only 32 px, B = 8")
    ap.add_argument("--jobs", type=int, default=2, help="settings run in parallel, one thread each (default 2)")
    ap.add_argument("--json", default=None, help="write the rows here")
    a = ap.parse_args(argv)
    jobs = [dict(s, n_users=a.users, first_user=a.first_user, draws=a.draws) for s in settings(a.quick)]
    key = lambda j: json.dumps({k: j[k] for k in ("image_size", "batch_size", "task_label", "bn_mode", "n_users", "first_user",
                                                    "draws")}, sort_keys=True)
    done = {}
    if a.json and os.path.exists(a.json):  # resume: rows already measured with the same settings are kept
        with open(a.json) as f: done = {key(r): r for r in json.load(f) if "first_user" in r and "draws" in r}
    def save():
        if a.json: write_json(a.json, [done[key(j)] for j in jobs if key(j) in done])
    todo = [j for j in jobs if key(j) not in done]
    from diffula.files import write_json  # atomic: a killed run leaves the last complete file
    t0 = time.time()
    with ProcessPoolExecutor(a.jobs) as pool:
        futures = {pool.submit(one, j): j for j in todo}
        for fut in as_completed(futures):
            j = futures[fut]
            done[key(j)] = dict(fut.result(), first_user=j["first_user"], draws=j["draws"]); save()
            print(f"{len(done)}/{len(jobs)} settings done", flush=True)
    rows = [done[key(j)] for j in jobs]
    from diffula.retrieval import markdown_table
    cols = ["image_size", "batch_size", "task_label", "bn_mode", "n_users", "mean_rank", "chance_rank", "top1", "top3", "wall_s",
            "note"]
    print(f"users {a.first_user}-{a.first_user + a.users - 1}, {a.draws} augmentation draws per candidate, "
          f"{time.time() - t0:.0f} s\n")
    print(markdown_table(rows, cols))
    save()
    return rows


if __name__ == "__main__":
    main()
