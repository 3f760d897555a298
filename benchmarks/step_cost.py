"""Per-step cost of the DiffULA attack (Algorithm 1), measured side by side in one run on the same inputs.

One optimisation step = the prior term g_p (full: through the UNet; or Jacobian-free), the augmented batch
A(x0) (kornia), and the gradient-matching term g_gm (ResNet-18 forward, create_graph gradient, cosine
distance, backward to x0). For each part it prints the time, the FLOPs (torch's FlopCounterMode), the
achieved rate, and that rate as a fraction of this machine's fp32 matrix-multiply rate measured in the
same run; ratios are between parts of the same run, never against numbers from elsewhere.

    python benchmarks/step_cost.py                                  # CPU-sized defaults
    python benchmarks/step_cost.py --prior-res 64 --prior-width 64 --batch 30 --model-res 64
    python benchmarks/step_cost.py --prior synthfaces               # the shipped SynthFaces prior
    python benchmarks/step_cost.py --paper --device cuda            # the paper's configuration (GPU)

--paper times the paper's setting: an ADM-256-sized UNet (the FFHQ-256 architecture of Baranchuk et al.,
random weights: they cost the same as trained ones), ResNet-18 at 64x64, B = 30, full and Jacobian-free
prior gradient, fp32 and bf16 autocast, and extrapolates to S = 4,000 steps (the paper: 23.3 min on an A100).

--levers times one whole DiffULA step (the prior term g_p with the shipped SynthFaces prior, Jacobian-free as in the CPU
presets; the augmented batch; the gradient-matching term g_gm through the attack's own code) on one thread, averaged
over five window positions along a 480-step schedule (the window-only lever depends on where the window rests), for
today's setting (M = B, fp32, all layers), each lever alone and all together, at 64 px, B = 30 and at the demo's
32 px, B = 8; each as a speed-up over today's and as a fraction of the fp32 GEMM rate measured in the same run:

    python benchmarks/step_cost.py --levers                 # both settings, one thread (about 3 minutes)
    python benchmarks/step_cost.py --levers --copies 4 8 16 # the copies to time (default 4 8)
    python benchmarks/step_cost.py --levers --paper --device cuda   # on a GPU, with the ADM-256-sized prior
"""
import argparse
import multiprocessing as mp
import os
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch.utils.flop_counter import FlopCounterMode

from diffula.attack import AttackConfig, augmentation, augmented_batch
from diffula.formulation import candidate_gradient, client_gradient, gradient_distance, model_layers, resnet18
from diffula.prior import DiffusionPrior, load_prior


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def timed(fn, device, repeats, warmup=1):
    "Mean seconds per call of fn() after warm-up."
    for _ in range(warmup): fn()
    sync(device); t0 = time.perf_counter()
    for _ in range(repeats): fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def flops(fn):
    "FLOPs of one call of fn(), as counted by torch's FlopCounterMode (matmuls and convolutions)."
    with FlopCounterMode(display=False) as fc: fn()
    return fc.get_total_flops()


def gemm_rate(device, dtype=torch.float32, n=None, repeats=5):
    "This machine's matrix-multiply rate in FLOP/s (n x n x n GEMM)."
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device, repeats)


def small_unet(res, width):
    "A SynthFaces-sized ε-model: three levels, attention at the middle one."
    return UNet2DModel(sample_size=res, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(width, 2 * width, 2 * width),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def adm256_unet():
    "The FFHQ-256 ADM architecture (256 ch, 2 res blocks, mult 1,1,2,2,4,4, attention at 32/16/8, 6 outputs) as a UNet2DModel."
    attn = [256 // 2 ** l in (32, 16, 8) for l in range(6)]
    return UNet2DModel(sample_size=256, in_channels=3, out_channels=6, layers_per_block=2,
                       block_out_channels=(256, 256, 512, 512, 1024, 1024),
                       down_block_types=tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn),
                       up_block_types=tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in attn[::-1]),
                       attention_head_dim=64, resnet_time_scale_shift="scale_shift", downsample_type="resnet",
                       upsample_type="resnet", flip_sin_to_cos=True, freq_shift=0)


def make_prior(args, device):
    if args.paper: unet = adm256_unet()
    elif args.prior == "random": unet = small_unet(args.prior_res, args.prior_width)
    else: return load_prior(args.prior, device=device)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    return DiffusionPrior(unet.to(device), sched).to(device)


def parts(prior, model, B, device, seed=0):
    "Closures for each part of one step, on fixed inputs."
    g = torch.Generator(device="cpu").manual_seed(seed)
    R = prior.resolution
    x0 = (torch.rand(1, 3, R, R, generator=g) * 2 - 1).to(device)
    noise = torch.randn(1, 3, R, R, generator=g).to(device)
    images = torch.rand(B, 3, model.input_size, model.input_size, generator=g).to(device)
    labels = torch.randint(0, 2, (B,), generator=g).to(device)
    observed = client_gradient(model, images, labels)
    layers = model_layers(model)
    w = torch.ones(len(layers))
    transform = augmentation(AttackConfig())

    def prior_full(): return prior.grad(x0, 600, noise, jacobian=True)
    def prior_jf(): return prior.grad(x0, 600, noise, jacobian=False)
    def augment():
        with torch.no_grad(): return augmented_batch(x0, B, transform, model.input_size)
    def grad_match():
        x = x0.detach().requires_grad_(True)
        d = gradient_distance(candidate_gradient(model, augmented_batch(x, B, transform, model.input_size), labels),
                              observed, "cosine", layer_weights=w, layers=layers)
        return torch.autograd.grad(d, x)[0]
    return dict(prior_full=prior_full, prior_jacobian_free=prior_jf, augmentation=augment, gradient_matching=grad_match)


def report(prior, model, B, device, repeats, rate, autocast_dtype=None, steps=None):
    fns = parts(prior, model, B, device)
    if autocast_dtype is not None:
        wrap = lambda f: (lambda: _autocast(f, device, autocast_dtype))
        fns = {k: wrap(f) for k, f in fns.items()}
    rows = {}
    for k, f in fns.items():
        rows[k] = (timed(f, device, repeats), flops(f))
    for mode in ("full", "jacobian_free"):
        p = rows[f"prior_{mode}"]
        rows[f"step ({mode} prior)"] = (p[0] + rows["gradient_matching"][0], p[1] + rows["gradient_matching"][1])
    label = f"{'fp32' if autocast_dtype is None else 'bf16 autocast'}"
    print(f"\n{label}: prior {prior.resolution}px ({sum(p.numel() for p in prior.parameters()) / 1e6:.1f} M params), "
          f"ResNet-18 {model.input_size}px, B={B}, device={device}, threads={torch.get_num_threads()}")
    step_full = rows["step (full prior)"][0]
    print(f"{'part':28s} {'ms':>10s} {'GFLOP':>9s} {'GFLOP/s':>9s} {'of GEMM':>8s} {'of full step':>12s}")
    for k, (t, fl) in rows.items():
        print(f"{k:28s} {t * 1e3:10.2f} {fl / 1e9:9.2f} {fl / t / 1e9:9.1f} {fl / t / rate:8.1%} {t / step_full:12.2f}")
    if steps:
        for mode in ("full", "jacobian_free"):
            t = rows[f"step ({mode} prior)"][0]
            print(f"  {steps} steps with the {mode} prior: {t * steps / 60:.1f} min (paper: 23.3 min on an A100, full prior)")
    return rows


def _autocast(f, device, dtype):
    with torch.autocast(device_type=device.type, dtype=dtype): return f()


# ---- --levers: today's step against the performance levers of AttackConfig (copies, precision, window_only) ----------

LEVER_SETTINGS = {"64 px, B = 30": (64, 30), "demo: 32 px, B = 8": (32, 8)}


def lever_configs(B, copies):
    "The configs timed: today's (M = B, fp32, all layers), each lever alone, and all together (one per M)."
    from diffula.attack import AttackConfig
    base = AttackConfig.cpu(progress=False, copies=None, precision="fp32", window_only=False)
    rows = {"today (M = B, fp32, all layers)": base}
    for m in copies:
        if m < B: rows[f"copies M = {m}"] = replace(base, copies=m)
    rows["precision bf16"] = replace(base, precision="bf16")
    rows["window_only"] = replace(base, window_only=True)
    for m in copies:
        if m < B: rows[f"all: M = {m}, bf16, window_only"] = replace(base, copies=m, precision="bf16", window_only=True)
    return rows


class LeverStep:
    "One whole DiffULA step through the attack's own code, on fixed inputs, at given positions of a 480-step schedule."
    def __init__(self, prior, size, B, positions=5, seed=0):
        from diffula.attack import AttackConfig
        g, dev = torch.Generator().manual_seed(seed), prior.device
        self.prior, self.size, self.B, self.device = prior, size, B, dev
        self.model = resnet18(num_classes=2, seed=seed, input_size=size).to(dev)
        images = torch.rand(B, 3, size, size, generator=g).to(dev)
        self.labels = torch.randint(0, 2, (B,), generator=g).to(dev)
        self.observed = client_gradient(self.model, images, self.labels)
        self.layers = model_layers(self.model)
        self.oo = torch.stack([o.pow(2).sum() for o in self.observed])  # |∇w|² per tensor: once per attack, as there
        R = prior.resolution
        self.x0 = (torch.rand(1, 3, R, R, generator=g) * 2 - 1).to(dev)
        self.noise = torch.randn(1, 3, R, R, generator=g).to(dev)
        S = AttackConfig.cpu().steps
        tau, _, window = AttackConfig.cpu().schedules(len(self.layers), prior.num_train_timesteps)
        self.at = [(int(tau[i]), window[i]) for i in torch.linspace(0, S - 1, positions).long().tolist()]

    def g_gm(self, c, k, draw_seed=0):
        "g_gm at position k, T's draws from `draw_seed`."
        from diffula.attack import matching_gradient, copy_targets, augmentation
        targets = copy_targets(self.labels, c.copies or self.B, 2)
        torch.manual_seed(draw_seed)
        return matching_gradient(self.x0, self.model, self.observed, targets, augmentation(c), c, self.at[k][1],
                                  self.layers, self.size, self.oo)[0]

    def step(self, c):
        "One step at every position (g_p Jacobian-free, as in the CPU presets, + g_gm)."
        from diffula.attack import _prior_step
        for k, (t, _) in enumerate(self.at):
            g_p, _ = _prior_step(self.prior, self.x0, t, self.noise, False)
            (g_p + self.g_gm(c, k)).sum().item()                  # .item() waits for a GPU


def _cos(a, b): return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def lever_table(prior, size, B, copies, repeats, rate, device):
    "Time each config side by side; print ms per step, speed-up, GEMM fraction and the step direction's cosine."
    run, cfgs = LeverStep(prior, size, B), lever_configs(B, copies)
    n = len(run.at)
    today = cfgs["today (M = B, fp32, all layers)"]
    ref = [torch.stack([run.g_gm(today, k, s) for s in range(8)]).mean(0) for k in range(n)]  # E over T, M = B
    one = [run.g_gm(today, k, 100) for k in range(n)]
    print(f"\n{size} px, B = {B}, ResNet-18, the shipped prior ({prior.resolution} px, Jacobian-free g_p), one thread, "
          f"mean over {n} window positions of a {480}-step schedule")
    print(f"{'setting':36s} {'ms/step':>8s} {'speed-up':>8s} {'GFLOP':>7s} {'of GEMM':>8s} {'cos same T':>10s} "
          f"{'cos E[T]':>8s}   device={device}, threads={torch.get_num_threads()}")
    times = {name: [] for name in cfgs}                           # timed side by side, interleaved by repeat
    for r in range(repeats + 1):
        for name, c in cfgs.items():
            t0 = time.perf_counter(); run.step(c); t = (time.perf_counter() - t0) / n
            if r: times[name].append(t)                           # the first round warms up
    base = sum(times["today (M = B, fp32, all layers)"]) / repeats
    for name, c in cfgs.items():
        t = sum(times[name]) / len(times[name])
        fl = flops(lambda: run.step(c)) / n
        same = (sum(_cos(run.g_gm(today, k, 100), run.g_gm(c, k, 100)) for k in range(n)) / n
                if (c.copies or B) == B else float("nan"))         # same draws of T: precision and window only
        mean = sum(_cos(ref[k], run.g_gm(c, k, 100)) for k in range(n)) / n
        print(f"{name:36s} {t * 1e3:8.1f} {base / t:7.2f}x {fl / 1e9:7.2f} {fl / t / rate:8.1%} {same:10.4f} {mean:8.3f}")
    print("  cos same T: cosine of g_gm to today's on the same draws of T (precision, window); "
          "cos E[T]: of one draw's g_gm to the mean of 8 draws of today's (what M costs in variance; "
          f"today's own: {sum(_cos(ref[k], one[k]) for k in range(n)) / n:.3f})")
    return {k: sum(v) / len(v) for k, v in times.items()}


def _layout_worker(args):
    threads, size, B, copies, seconds = args
    torch.set_num_threads(threads)
    from diffula.attack import AttackConfig
    run = LeverStep(load_prior("synthfaces"), size, B, positions=1)
    c = AttackConfig.paper_cpu(progress=False, copies=copies)
    run.step(c)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds: run.step(c); n += 1
    return n / (time.perf_counter() - t0)


def thread_layout(size, B, copies, seconds=20):
    "Steps per second of the whole machine: one process with two threads, against two processes with one each."
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as p: one2 = p.map(_layout_worker, [(2, size, B, copies, seconds)])[0]
    with ctx.Pool(2) as p: two1 = sum(p.map(_layout_worker, [(1, size, B, copies, seconds)] * 2))
    print(f"\nthread layout at {size} px, B = {B}, paper-cpu levers: one process, two threads: {one2:.2f} steps/s; "
          f"two processes, one thread each: {two1:.2f} steps/s together ({two1 / one2:.2f}x)")


def levers_main(copies, repeats, layout=True, device=torch.device("cpu"), prior=None):
    "--levers: the tables (prior: the shipped SynthFaces one unless given, e.g. --paper's ADM-256-sized UNet)."
    if device.type == "cpu": torch.set_num_threads(1)
    settings = LEVER_SETTINGS if prior is None else {"64 px, B = 30": (64, 30)}
    prior = prior or load_prior("synthfaces", device=device)
    rate = gemm_rate(device)
    x, w = torch.randn(30, 256, 16, 16, device=device), torch.randn(256, 256, 3, 3, device=device)
    conv = 2 * 30 * 256 * 256 * 9 * 16 * 16 / timed(lambda: torch.nn.functional.conv2d(x, w, padding=1), device, 5)
    print(f"fp32 GEMM rate measured in this run: {rate / 1e9:.0f} GFLOP/s on {device}"
          + (" (one thread)" if device.type == "cpu" else "") + f"; a ResNet-sized 3x3 convolution: {conv / 1e9:.0f} "
          "GFLOP/s (the convolution library can beat torch's GEMM, so a fraction of GEMM can exceed 100 %)")
    out = {name: lever_table(prior, size, B, copies, repeats, rate, device) for name, (size, B) in settings.items()}
    print("\ntorch.compile: not timed — torch 2.13's aot_autograd raises 'torch.compile with aot_autograd does not "
          "currently support double backward' on the create_graph gradient that g_gm differentiates")
    if layout and device.type == "cpu": thread_layout(64, 30, min(copies))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", default="random", help="'random' (sized by --prior-res/--prior-width), 'synthfaces', or a prior folder")
    ap.add_argument("--prior-res", type=int, default=32, help="resolution of the random prior (default 32)")
    ap.add_argument("--prior-width", type=int, default=32, help="base channels of the random prior (default 32)")
    ap.add_argument("--batch", type=int, default=8, help="B, the client's batch size (default 8; the paper: 30)")
    ap.add_argument("--model-res", type=int, default=32, help="ResNet-18 input size (default 32; the paper: 64)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per part")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--paper", action="store_true", help="the paper's configuration (ADM-256 UNet, 64 px, B=30; GPU)")
    ap.add_argument("--levers", action="store_true", help="today's step against the AttackConfig levers (CPU: one thread)")
    ap.add_argument("--copies", type=int, nargs="+", default=[4, 8], help="--levers: the copies M to time (default 4 8)")
    ap.add_argument("--no-layout", action="store_true", help="--levers: skip the thread-layout comparison")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available(): raise SystemExit("--device cuda asked for, but no CUDA GPU here")
    if args.paper:
        if device.type != "cuda": raise SystemExit("--paper needs a GPU (an ADM-256 step is ~7 TFLOP); run with --device cuda on a GPU machine")
        args.batch, args.model_res = 30, 64
    if args.levers:
        prior = make_prior(args, device) if args.paper else None
        return levers_main(args.copies, args.repeats, not args.no_layout, device, prior)
    torch.manual_seed(0)
    prior = make_prior(args, device)
    model = resnet18(seed=0, input_size=args.model_res).to(device)
    rate = gemm_rate(device)
    print(f"fp32 GEMM rate measured in this run: {rate / 1e9:.0f} GFLOP/s on {device}")
    report(prior, model, args.batch, device, args.repeats, rate, steps=4000 if args.paper else None)
    if device.type == "cuda":
        rate_bf16 = gemm_rate(device, torch.bfloat16)
        print(f"\nbf16 GEMM rate measured in this run: {rate_bf16 / 1e12:.0f} TFLOP/s (fractions below are of the fp32 rate)")
        report(prior, model, args.batch, device, args.repeats, rate, torch.bfloat16, steps=4000 if args.paper else None)


if __name__ == "__main__":
    main()
