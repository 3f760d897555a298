"""Cost of the prior gradient g_p: full (through the UNet, Algorithm 1) vs Jacobian-free (score-distillation form).

Measured side by side in one run on the same inputs; prints times and their ratio.
Usage: python benchmarks/bench_prior_grad.py [synthfaces|PATH|HUB_ID] [batch] [repeats]
"""
import os, sys, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from diffula.prior import load_prior


def bench(fn, repeats):
    fn()                                                   # warm-up
    if torch.cuda.is_available(): torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats): fn()
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return (time.perf_counter() - t0)/repeats


def main(source="synthfaces", batch=1, repeats=5):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    prior = load_prior(source, device=dev)
    x0 = torch.rand(batch, 3, prior.resolution, prior.resolution, device=dev)*2 - 1
    n = torch.randn_like(x0)
    full = bench(lambda: prior.grad(x0, 600, n), repeats)
    jf = bench(lambda: prior.grad(x0, 600, n, jacobian=False), repeats)
    print(f"{prior}  batch={batch}  device={dev}  threads={torch.get_num_threads()}")
    print(f"full g_p: {full*1e3:.1f} ms   Jacobian-free g_p: {jf*1e3:.1f} ms   ratio full/JF: {full/jf:.2f}")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0] if a else "synthfaces", int(a[1]) if len(a) > 1 else 1, int(a[2]) if len(a) > 2 else 5)
