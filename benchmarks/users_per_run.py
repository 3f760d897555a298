"""Users per run: does stacking K users' gradient-matching steps into one pass raise the throughput on this machine?

The gradient-matching term is the part of a DiffULA step that depends on the user: each user's augmented batch
A(x0_k) through the federated model, its parameter gradient with `create_graph=True`, the cosine distance to that
user's own observed gradient, and the gradient of the distance w.r.t. x0_k. Two ways to do K users:

- loop: K separate passes (what K independent attacks do);
- vmap: one pass, `torch.func.vmap` over users of the per-user parameter gradient (`torch.func.grad` of the loss
  through `functional_call`), every user's distance to its own observed gradient, one backward for all K.

Both differentiate the same function and give the same per-user gradients w.r.t. x0 (the largest relative
difference is printed); the script prints users·steps per second for each K side by side in one run, interleaved
(loop, vmap, loop, ...), and the vmap/loop ratio. Eval-mode BatchNorm (the threat model's default), cosine distance
over every parameter, B copies per user. The augmentation draw is fixed per user and x0 enters it straight-through
(its own cost is small and the same either way), so only the federated model's part is timed; the prior's UNet on
K images at once is a plain batch and is not in question here.

    OMP_NUM_THREADS=1 python benchmarks/users_per_run.py            # K = 1, 2, 4, 8 at the demo's 32 px, B = 8
    python benchmarks/users_per_run.py --ks 1,8,16 --device cuda --threads 0
"""
import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from diffula.data import resolve_device
from diffula.attack import AttackConfig, augmentation, augmented_batch
from diffula.formulation import candidate_gradient, client_gradient, gradient_distance, resnet18


def setup(K, B, size, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = resnet18(num_classes=2, seed=0, input_size=size).to(device).eval()
    ys = [torch.randint(0, 2, (B,), generator=g).to(device) for _ in range(K)]
    observed = [client_gradient(model, torch.rand(B, 3, size, size, generator=g).to(device), y, "eval") for y in ys]
    x0 = (torch.rand(K, 1, 3, size, size, generator=g) * 2 - 1).to(device)
    tf = augmentation(AttackConfig())
    torch.manual_seed(seed)
    batches = [augmented_batch(x0[k], B, tf, size).detach() for k in range(K)]  # fixed draws, the same for both ways
    return model, ys, observed, x0, batches


def loop_step(model, ys, observed, x0, batches):
    "K separate passes: per user, F(A(x0_k)) with create_graph, the cosine to its own gradient, d/dx0_k."
    out = []
    for k in range(len(ys)):
        xk = x0[k].clone().requires_grad_(True)
        b = batches[k] + (xk - xk.detach()) * 0.5  # the fixed draw, x0 straight-through ([-1,1] -> [0,1])
        d = gradient_distance(candidate_gradient(model, b, ys[k], "eval"), observed[k], "cosine")
        out.append(torch.autograd.grad(d, xk)[0])
    return torch.stack(out)


def make_vmap_step(model):
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    names = list(params)

    def loss(p, x, y): return F.cross_entropy(functional_call(model, (p, buffers), (x,)), y)

    per_user = vmap(grad(loss), in_dims=(None, 0, 0))

    def step(ys, observed, x0, batches):
        xs = x0.clone().requires_grad_(True)
        X = torch.stack(batches) + (xs - xs.detach()) * 0.5  # (K,B,3,H,W)
        G = per_user(params, X, torch.stack(ys))  # name -> (K, *shape)
        O = {n: torch.stack([o[i] for o in observed]) for i, n in enumerate(names)}
        dot = sum((G[n] * O[n]).flatten(1).sum(1) for n in names)
        gg = sum((G[n] ** 2).flatten(1).sum(1) for n in names)
        oo = sum((O[n] ** 2).flatten(1).sum(1) for n in names)
        d = 1 - dot / (gg.sqrt() * oo.sqrt())  # per-user cosine distance (Geiping et al. 2020)
        return torch.autograd.grad(d.sum(), xs)[0]

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ks", default="1,2,4,8", help="users per run, comma-separated (default 1,2,4,8)")
    ap.add_argument("--batch", type=int, default=8, help="B copies per user (default 8, the demo's)")
    ap.add_argument("--size", type=int, default=32, help="federated model input size (default 32)")
    ap.add_argument("--reps", type=int, default=3, help="timed steps per way per round (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    print(f"device {device}, threads {torch.get_num_threads()}, {a.size} px, B = {a.batch}, eval-mode BatchNorm, "
          "cosine distance")
    print("| K | loop users·steps/s | vmap users·steps/s | vmap / loop | max rel. diff of d/dx0 |")
    print("|---|---|---|---|---|")
    for K in [int(k) for k in a.ks.split(",")]:
        model, ys, observed, x0, batches = setup(K, a.batch, a.size, device)
        vstep = make_vmap_step(model)
        ref, got = loop_step(model, ys, observed, x0, batches), vstep(ys, observed, x0, batches)
        diff = float(((ref - got).abs().amax() / ref.abs().amax()).item())
        times = {"loop": [], "vmap": []}
        for _ in range(a.rounds):
            for way in ("loop", "vmap"):
                if way == "loop": fn = lambda: loop_step(model, ys, observed, x0, batches)  # noqa: E731
                else: fn = lambda: vstep(ys, observed, x0, batches)  # noqa: E731
                fn(); sync(); t = time.perf_counter()
                for _ in range(a.reps): fn()
                sync(); times[way].append((time.perf_counter() - t) / a.reps)
        lp, vm = K / np.median(times["loop"]), K / np.median(times["vmap"])
        print(f"| {K} | {lp:.2f} | {vm:.2f} | {vm / lp:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
