"""Per-step cost of the paper's baselines (Inverting Gradients, GIAS's two stages) beside DiffULA, in one run.

Each method runs through its public entry point (`inverting_gradients`, `gias`, `diffula_attack`) on the same
SynthFaces user, model and observed gradient; a callback stamps the time of every step, and the per-step cost is
the median over the measured steps of several interleaved rounds (IG, GIAS, DiffULA, IG, ...), so every method sees
the same machine state. It prints seconds per step, the ratio to DiffULA's step, the passes through the federated
model and the generator per step (from each result's `budget`), and what the paper's budgets (IG 24,000 steps;
GIAS 1,000 + 8,000; DiffULA 4,000) would cost at these step costs, beside the paper's A100 minutes.

    OMP_NUM_THREADS=1 python benchmarks/baselines_step_cost.py                 # the demo setting: 32 px, B = 8
    OMP_NUM_THREADS=1 python benchmarks/baselines_step_cost.py --size 64 --batch 30
    python benchmarks/baselines_step_cost.py --device cuda --threads 0

DiffULA runs `AttackConfig.cpu()` (Jacobian-free prior gradient, the shipped SynthFaces prior) without the final
denoising; `--prior-grad full` times the full-Jacobian prior step instead. GIAS uses the shipped SynthFaces generator
(32 px; at --size 64 its output is upsampled to the model's input, which costs the same as the paper's downsampling
of a larger generator's output would not: the generator here is small). Ratios are only between numbers of this run.
"""
import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch

from diffula.data import resolve_device
from diffula.attack import AttackConfig, diffula_attack
from diffula.baselines import GIASConfig, IGConfig, PAPER_BUDGETS, gias, inverting_gradients, load_generator
from diffula.formulation import client_gradient, resnet18
from diffula.prior import load_prior
from diffula.synthfaces import SynthFaces


def stamps(device):
    "A callback that records the time at the end of every step, and the list it fills."
    ts = []
    def cb(step, x, rec):
        if device.type == "cuda": torch.cuda.synchronize()
        ts.append((time.perf_counter(), rec.get("stage", "x")))
    return cb, ts


def per_step(t0, ts, warmup):
    "Seconds per step from the stamps, dropping the first `warmup` steps of each stage."
    out, prev, count = {}, t0, {}
    for t, stage in ts:
        count[stage] = count.get(stage, 0) + 1
        if count[stage] > warmup: out.setdefault(stage, []).append(t - prev)
        prev = t
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32, help="federated model input size (px); the demo: 32, the paper: 64")
    p.add_argument("--batch", type=int, default=8, help="B, the client's batch size; the demo: 8, the paper: 30")
    p.add_argument("--steps", type=int, default=6, help="measured steps per method (and per GIAS stage) per round")
    p.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each run (and stage)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (IG, GIAS, DiffULA, IG, ...)")
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    p.add_argument("--prior-grad", default="jacobian_free", choices=("jacobian_free", "full"), help="DiffULA's prior gradient")
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    user = SynthFaces(1, a.batch, seed=0, size=a.size, task_label="identity")[0]
    model = resnet18(num_classes=2, seed=0, input_size=a.size).to(device)
    observed = client_gradient(model, user.images.to(device), user.labels.to(device), "eval")
    prior, G = load_prior("synthfaces", device=device), load_generator(device=str(device))
    n, w = a.steps + a.warmup, a.warmup
    common = dict(progress=False, device=str(device), seed=0)

    def run_ig():
        cb, ts = stamps(device); t0 = time.perf_counter()
        r = inverting_gradients(observed, model, IGConfig(steps=n, **common), labels=user.labels, callbacks=[cb])
        return per_step(t0, ts, w), r.budget.as_dict()

    def run_gias():
        cb, ts = stamps(device); t0 = time.perf_counter()
        r = gias(observed, model, G, GIASConfig(latent_steps=n, param_steps=n, **common), labels=user.labels, callbacks=[cb])
        return per_step(t0, ts, w), r.budget.as_dict()

    def run_diffula():
        cb, ts = stamps(device); t0 = time.perf_counter()
        cfg = AttackConfig.cpu(steps=n, t_star=None, snapshot_every=0, prior_grad=a.prior_grad, **common)
        r = diffula_attack(observed, model, prior, cfg, labels=user.labels, callbacks=[cb])
        return per_step(t0, ts, w), r.budget.as_dict()

    times = {k: [] for k in ("ig", "gias_latent", "gias_param", "diffula")}
    budgets = {}
    for _ in range(a.rounds):
        s, budgets["ig"] = run_ig(); times["ig"] += s["x"]
        s, budgets["gias"] = run_gias(); times["gias_latent"] += s["latent"]; times["gias_param"] += s["param"]
        s, budgets["diffula"] = run_diffula(); times["diffula"] += s["x"]
    med = {k: float(np.median(v)) for k, v in times.items()}

    dev = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} torch thread(s)"
    print(f"per-step cost, {a.size} px, B = {a.batch}, ResNet-18 ({'eval'} BatchNorm), {dev}; median of "
          f"{a.rounds} rounds x {a.steps} steps after {a.warmup} warm-up steps")
    gb = budgets["gias"]
    rows = [("Inverting Gradients", "ig", budgets["ig"]["model_backward"] / budgets["ig"]["steps"], 0),
            ("GIAS stage 1 (latent)", "gias_latent", 2, a.batch),
            ("GIAS stage 2 (per-image G)", "gias_param", 2, a.batch),
            (f"DiffULA ({a.prior_grad} prior)", "diffula", 2, 0)]
    print(f"{'method':<30}{'s/step':>9}{'x DiffULA':>11}{'f fwd/bwd':>11}{'G img/step':>12}")
    for name, k, bwd, gimg in rows:
        print(f"{name:<30}{med[k]:>9.4f}{med[k] / med['diffula']:>11.2f}{'1/' + format(bwd, 'g'):>11}{gimg:>12}")
    ig_total = PAPER_BUDGETS["ig"]["steps"] * med["ig"]
    gias_total = PAPER_BUDGETS["gias"]["latent_steps"] * med["gias_latent"] + PAPER_BUDGETS["gias"]["param_steps"] * med["gias_param"]
    dif_total = PAPER_BUDGETS["diffula"]["steps"] * med["diffula"]
    print("\nthe paper's budgets at these step costs (ratio to DiffULA; the paper's A100 minutes and ratio):")
    for name, tot, k in (("IG 24,000 steps", ig_total, "ig"), ("GIAS 1,000 + 8,000 steps", gias_total, "gias"),
                         ("DiffULA 4,000 steps", dif_total, "diffula")):
        pm = PAPER_BUDGETS[k]["minutes"]
        print(f"  {name:<26}{tot / 60:>8.1f} min  x{tot / dif_total:>5.2f}    paper {pm:>5.1f} min  x{pm / PAPER_BUDGETS['diffula']['minutes']:>5.2f}")
    print("\nsteps that fit in DiffULA's 4,000-step wall time:")
    print(f"  IG: {dif_total / med['ig']:.0f} steps;  GIAS (1:8 split): {dif_total / (med['gias_latent'] + 8 * med['gias_param']):.0f} "
          f"latent + {8 * dif_total / (med['gias_latent'] + 8 * med['gias_param']):.0f} parameter steps")
    print(f"\nGIAS budget of the last round: {gb}")


if __name__ == "__main__":
    main()
