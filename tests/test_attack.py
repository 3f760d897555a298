"""Tests for diffula.attack (Algorithm 1): config validation, augmented batch, the attack loop, Ctrl-C, seeds, bad input."""
import json
import numpy as np
import pytest
import torch
from diffusers import UNet2DModel, DDPMScheduler

from diffula.attack import (AttackConfig, augmentation, augmented_batch, augmented_distance, diffula_attack, to_model_size,
                            _prior_step)
from diffula.attack_core import AttackResult
from diffula.data import resolve_device
from diffula.formulation import dlg_net, client_gradient, recover_labels, resnet18
from diffula.prior import DiffusionPrior, load_prior
from diffula.data import data_dir

torch.set_num_threads(1)


def tiny_prior(channels=3, size=16, seed=0):
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                       up_block_types=("UpBlock2D",) * 2)
    return DiffusionPrior(unet, DDPMScheduler(num_train_timesteps=1000))


@pytest.fixture(scope="module")
def case():
    model = dlg_net(num_classes=2, seed=0, input_size=8)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8, generator=g), torch.tensor([0, 1, 1, 1])
    return model, client_gradient(model, x, y), y, tiny_prior()


def cfg(**kw):
    return AttackConfig.smoke(**{**dict(t_star=5), **kw})


def test_defaults_are_the_papers():
    c = AttackConfig()
    assert (c.steps, c.t_start, c.t_end, c.clip_start, c.clip_end, c.t_star) == (4000, 1000, 500, 1.5, 1.0, 200)
    assert (c.p_noise, c.p_jitter, c.p_perspective, c.p_blur) == (0.5,) * 4
    assert c.distance == "cosine" and c.prior_grad == "full" and c.lr > 0
    assert c.validate() is c
    assert AttackConfig.cpu().steps < 1000 and AttackConfig.cpu(steps=7).steps == 7


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=2.5), dict(lr=0), dict(lr=-1), dict(p_noise=1.1),
                                 dict(p_perspective=-0.5), dict(t_start=1001), dict(t_end=0, t_min=1),
                                 dict(t_start=600, t_end=700), dict(t_star=1000), dict(clip_start=0),
                                 dict(prior_grad="exact"), dict(distance="l1"), dict(window_end_frac=0),
                                 dict(snapshot_every=-2), dict(device="tpu"), dict(denoise_method="euler")])
def test_validate_rejects(bad):
    with pytest.raises(ValueError, match="AttackConfig"):
        AttackConfig(**bad).validate()


def test_augmented_batch_shape_range_and_gradient():
    x0 = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.manual_seed(0)
    x = x0.clone().requires_grad_(True)
    a = augmented_batch(x, 5, augmentation(AttackConfig()), 8)
    assert a.shape == (5, 3, 8, 8)
    a.pow(2).sum().backward()
    assert x.grad.abs().sum() > 0
    ident = augmentation(AttackConfig(p_noise=0, p_jitter=0, p_perspective=0, p_blur=0))
    b = augmented_batch(x0, 3, ident, 16)
    assert torch.allclose(b, ((x0 + 1) / 2).expand(3, -1, -1, -1), atol=1e-6)
    torch.manual_seed(1)
    always = augmentation(AttackConfig(p_noise=1, p_jitter=1, p_perspective=1, p_blur=1))
    c = augmented_batch(x0, 3, always, 16)
    assert not torch.allclose(c[0], c[1])  # each copy gets its own transform


def test_attack_runs_and_records(case):
    model, grads, y, prior = case
    seen = []
    r = diffula_attack(grads, model, prior, cfg(), batch_size=4, callbacks=[lambda i, x, rec: seen.append((i, x.shape, rec["tau"]))])
    assert isinstance(r, AttackResult) and r.steps_done == 4 and not r.interrupted and r.denoised
    assert [s[0] for s in seen] == [0, 1, 2, 3] and seen[0][1] == (1, 3, 16, 16)
    h = r.history
    assert all(len(h[k]) == 4 for k in h)
    assert h["tau"][0] == 999 and h["zeta"][0] == pytest.approx(1.5) and h["zeta"][-1] == pytest.approx(1.0)
    want = np.minimum(h["norm_ggm"], np.asarray(h["zeta"]) * np.asarray(h["norm_gp"]))
    assert np.allclose(h["norm_ggm_clipped"], want, rtol=1e-4)
    assert r.x_opt.shape == r.x_final.shape == (1, 3, 16, 16)
    assert 0 <= r.x_final.min() and r.x_final.max() <= 1
    assert r.images.shape == (1, 3, 8, 8) and torch.equal(r.images, to_model_size(r.x_final, 8))
    assert [s for s, _ in r.snapshots] == [2, 4]
    assert torch.equal(r.labels, torch.repeat_interleave(torch.arange(2), r.label_counts))
    assert r.label_counts.sum() == 4
    assert torch.equal(r.label_counts, recover_labels(grads, model, 4))


def test_labels_override_and_missing_batch_size(case):
    model, grads, y, prior = case
    r = diffula_attack(grads, model, prior, cfg(steps=1, t_star=None), labels=torch.tensor([1, 1, 0]))
    assert r.labels.tolist() == [1, 1, 0] and r.label_counts.tolist() == [1, 2] and not r.denoised
    assert torch.equal(r.x_final, r.x_opt)
    with pytest.raises(ValueError, match="batch_size"):
        diffula_attack(grads, model, prior, cfg(steps=1))
    with pytest.raises(ValueError, match="labels"):
        diffula_attack(grads, model, prior, cfg(steps=1), labels=torch.tensor([0, 5]))


def test_other_seed_differs_and_the_callers_rng_is_untouched(case):
    "The notebook shows that a seed repeats bit for bit; here: another seed differs, and the caller's RNG is left as found."
    model, grads, y, prior = case
    state = torch.get_rng_state()
    a = diffula_attack(grads, model, prior, cfg(seed=3), batch_size=4)
    c = diffula_attack(grads, model, prior, cfg(seed=4), batch_size=4)
    assert not torch.equal(a.x_opt, c.x_opt)
    assert torch.equal(torch.get_rng_state(), state)


def test_denoise_on_interrupt_still_denoises(case):
    "The notebook shows Ctrl-C's partial, undenoised result; with denoise_on_interrupt the partial x0 is denoised."
    model, grads, y, prior = case
    def stop(i, x, rec):
        if i == 2: raise KeyboardInterrupt
    r = diffula_attack(grads, model, prior, cfg(steps=50, denoise_on_interrupt=True), batch_size=4, callbacks=[stop])
    assert r.interrupted and r.steps_done == 3 and r.denoised and not torch.equal(r.x_final, r.x_opt)


def test_jacobian_free_mode_and_prior_loss(case):
    model, grads, y, prior = case
    x0 = torch.rand(1, 3, 16, 16) * 2 - 1
    n = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    g_full, l_full = _prior_step(prior, x0, 700, n, full=True)
    g_jf, l_jf = _prior_step(prior, x0, 700, n, full=False)
    assert l_full == pytest.approx(float(prior.loss(x0, 700, n)), rel=1e-4)
    assert l_jf == pytest.approx(l_full, rel=1e-3)
    assert torch.allclose(g_jf, prior.grad(x0, 700, n, jacobian=False))
    r = diffula_attack(grads, model, prior, cfg(prior_grad="jacobian_free"), batch_size=4)
    assert r.steps_done == 4 and np.isfinite(r.history["prior"]).all()


def test_nan_gradients_are_rejected(case):
    "Wrong counts and shapes are the notebook's checks; a gradient with NaN in it is rejected too."
    model, grads, y, prior = case
    with pytest.raises(ValueError, match="NaN"):
        diffula_attack([g * float("nan") for g in grads], model, prior, cfg(), batch_size=4)


def test_a_four_channel_prior_is_rejected(case):
    "The notebook rejects a greyscale prior; a latent-style 4-channel UNet does not fit either."
    model, grads, y, _ = case
    with pytest.raises(ValueError, match="4 channels"):
        diffula_attack(grads, model, tiny_prior(4), cfg(), batch_size=4)


def test_bad_config_is_rejected_by_the_attack(case):
    model, grads, y, prior = case
    with pytest.raises(ValueError, match="lr"):
        diffula_attack(grads, model, prior, cfg(lr=-1.0), batch_size=4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_absent_is_a_clear_error(case):
    model, grads, y, prior = case
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        diffula_attack(grads, model, prior, cfg(device="cuda"), batch_size=4)
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_device("cuda:0")


@pytest.mark.cuda
def test_cuda_run(case):
    model, grads, y, prior = case
    r = diffula_attack(grads, model, prior, cfg(device="cuda"), batch_size=4)
    assert r.x_final.device.type == "cpu" and r.steps_done == 4
    assert next(model.parameters()).device.type == "cpu"  # the caller's model is not moved


needs_prior = pytest.mark.skipif(not (data_dir() / "synthfaces_prior" / "unet").exists(), reason="shipped prior missing")


@needs_prior
def test_shipped_synthfaces_prior_few_steps():
    from diffula.synthfaces import SynthFaces
    u = SynthFaces(1, 4, seed=0, size=32)[0]
    model = resnet18(input_size=32)
    grads = client_gradient(model, u.images, u.labels)
    r = diffula_attack(grads, model, load_prior("synthfaces"), AttackConfig.smoke(steps=3), batch_size=4)
    assert r.x_final.shape == (1, 3, 32, 32) and r.denoised and r.steps_done == 3
    assert torch.equal(r.label_counts, torch.bincount(u.labels, minlength=2))
    assert np.all(np.asarray(r.history["grad_distance"]) <= 2)


def test_control_sees_the_attacks_noise_and_skips_matching(case):
    model, grads, y, prior = case
    att = diffula_attack(grads, model, prior, cfg(seed=5, t_star=None), batch_size=4)
    ctl = diffula_attack(grads, model, prior, cfg(seed=5, t_star=None, gm_weight=0.0), batch_size=4)
    assert np.isnan(ctl.history["grad_distance"]).all() and all(n == 0 for n in ctl.history["norm_ggm"])
    assert ctl.history["tau"] == att.history["tau"]
    # same x0 and ε: the first prior gradients agree exactly, so the first step differs only by g_gm
    assert ctl.history["norm_gp"][0] == pytest.approx(att.history["norm_gp"][0], rel=1e-6)
    assert not torch.equal(att.x_opt, ctl.x_opt)


def test_restarts_pick_the_smallest_augmented_distance(case):
    model, grads, y, prior = case
    r = diffula_attack(grads, model, prior, cfg(seed=2, restarts=3, select_draws=2), batch_size=4)
    assert len(r.restart_distances) == 3 and r.seed == 2 + int(np.argmin(r.restart_distances))
    single = diffula_attack(grads, model, prior, cfg(seed=r.seed, restarts=1), batch_size=4)
    assert torch.equal(single.x_final, r.x_final)      # the chosen restart is exactly the single run of its seed
    d = augmented_distance(r.x_final, grads, model, r.labels, cfg(), draws=2, seed=2)
    assert d == pytest.approx(min(r.restart_distances), rel=1e-5)


def test_bn_mode_reaches_the_candidates():
    model = resnet18(input_size=32)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 1, 0])
    prior = tiny_prior(size=32)
    runs = {m: diffula_attack(client_gradient(model, x, y, m), model, prior, cfg(bn_mode=m, t_star=None), batch_size=4)
            for m in ("eval", "train")}
    assert runs["eval"].history["grad_distance"] != runs["train"].history["grad_distance"]
    with pytest.raises(ValueError, match="bn_mode"): AttackConfig(bn_mode="batch").validate()


def test_layer_cosine_distance_runs(case):
    model, grads, y, prior = case
    r = diffula_attack(grads, model, prior, cfg(steps=2, distance="layer_cosine"), batch_size=4)
    d = r.series("grad_distance")
    assert len(d) == 2 and np.all((d >= 0) & (d <= 2))
    with pytest.raises(ValueError, match="distance"): AttackConfig(distance="manhattan").validate()


# --- The performance levers (issue 18): M copies, bf16 autocast, window-only gradients ---------------------------------

@pytest.fixture(scope="module")
def levers_reference():
    "x_opt, x_final and the gradient distances of 6-step runs made by the code before the levers (commit 18f4abe)."
    return torch.load(data_dir().parent / "tests" / "data" / "levers_off_18f4abe.pt")


def _reference_runs(**levers):
    "The runs of tests/data/levers_off_18f4abe.pt (both arms, 32 px B = 8 and 64 px B = 6) with the given levers."
    prior, out = load_prior("synthfaces"), {}
    for size, B in ((32, 8), (64, 6)):
        model = resnet18(num_classes=2, seed=0, input_size=size)
        g = torch.Generator().manual_seed(1)
        x, y = torch.rand(B, 3, size, size, generator=g), torch.tensor([0, 1] * (B // 2))
        obs = client_gradient(model, x, y)
        for gm in (1000.0, 0.0):
            kw = {k: (B if v == "B" else v) for k, v in levers.items()}
            r = diffula_attack(obs, model, prior, AttackConfig.cpu(steps=6, t_star=20, denoise_method="ddim",
                               snapshot_every=0, progress=False, gm_weight=gm, **kw), batch_size=B)
            out[f"{size}-{B}-{gm}"] = dict(x_opt=r.x_opt, x_final=r.x_final,
                                           grad_distance=torch.tensor(r.history["grad_distance"]))
    return out


@pytest.mark.parametrize("levers", [dict(), dict(copies="B", precision="fp32", window_only=False)])
def test_levers_off_equal_the_code_before_them_bit_for_bit(levers_reference, levers):
    new = _reference_runs(**levers)
    assert new.keys() == levers_reference.keys()
    for k, ref in levers_reference.items():
        for name, v in ref.items():
            assert torch.equal(v.isnan(), new[k][name].isnan()), (k, name)
            assert torch.equal(v.nan_to_num(), new[k][name].nan_to_num()), (k, name)


def test_levers_change_the_run(levers_reference):
    "Each lever is live (the attack's numbers change); the control, which has no g_gm, does not move."
    for levers in (dict(copies=4), dict(precision="bf16"), dict(window_only=True)):
        new = _reference_runs(**levers)
        assert not torch.equal(levers_reference["64-6-1000.0"]["x_opt"], new["64-6-1000.0"]["x_opt"]), levers
        assert torch.equal(levers_reference["64-6-0.0"]["x_opt"], new["64-6-0.0"]["x_opt"]), levers


def _one_step(size):
    "A ResNet-18 at `size`, the gradient of 6 images with mixed labels, its layers and a 32 px x0: one g_gm's inputs."
    from diffula.formulation import model_layers
    model = resnet18(num_classes=2, seed=0, input_size=size)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, size, size, generator=g), torch.tensor([0, 1, 1, 0, 1, 1])
    return model, client_gradient(model, x, y), y, model_layers(model), torch.rand(1, 3, 32, 32, generator=g) * 2 - 1


def test_bf16_keeps_the_step_direction():
    "bf16 autocast: g_gm on the same x0 and the same draws of T points where fp32's does (cosine > 0.95)."
    from diffula.attack import matching_gradient, copy_targets
    model, obs, y, layers, x0 = _one_step(64)
    gs = []
    for precision in ("fp32", "bf16"):
        c = AttackConfig(precision=precision)
        torch.manual_seed(3)                                        # the same draws of T for both
        gs.append(matching_gradient(x0, model, obs, copy_targets(y, 6, 2), augmentation(c), c, [1.0] * len(layers),
                                     layers, 64)[0])
    assert not torch.equal(gs[0], gs[1])
    assert torch.nn.functional.cosine_similarity(gs[0].flatten(), gs[1].flatten(), dim=0) > 0.95


def test_window_only_distance_equals_the_full_distance():
    "On the same step, window-only gives the distance and g_gm of the full candidate gradient up to float rounding."
    from diffula.attack import matching_gradient, copy_targets
    from diffula.schedules import layer_window
    model, obs, y, layers, x0 = _one_step(32)
    oo = torch.stack([o.pow(2).sum() for o in obs])
    for metric in ("cosine", "layer_cosine", "l2"):
        for step in (0, 10):                                        # the window on the deep layers only, then wider
            w = layer_window(40, len(layers))[step]
            out = []
            for wo in (False, True):
                c = AttackConfig(window_only=wo, distance=metric, p_noise=0, p_jitter=0, p_perspective=0, p_blur=0)
                out.append(matching_gradient(x0, model, obs, copy_targets(y, 6, 2), augmentation(c), c, w, layers, 32, oo))
            assert abs(out[0][1] - out[1][1]) <= 1e-5 * max(1, abs(out[0][1])), (metric, step)
            torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=1e-4 * float(out[0][0].abs().max()))


def test_copies_estimate_the_same_objective():
    "M label-weighted copies: with identity labels (one class) the targets are that class; else each copy the proportions."
    from diffula.attack import copy_targets
    y = torch.tensor([1, 1, 1, 1])
    assert torch.equal(copy_targets(y, 4, 2), y)                        # M = B: the labels themselves (today's objective)
    t = copy_targets(torch.tensor([0, 1, 1, 1]), 3, 2)
    assert t.shape == (3, 2) and torch.allclose(t, torch.tensor([[0.25, 0.75]] * 3))
    logits = torch.randn(3, 2)
    one = torch.nn.functional.cross_entropy(logits, copy_targets(y, 3, 2))
    assert torch.allclose(one, torch.nn.functional.cross_entropy(logits, torch.tensor([1, 1, 1])))


@pytest.mark.parametrize("bad", [dict(copies=0), dict(copies=2.5), dict(precision="fp16"), dict(window_only="yes"),
                                 dict(copies=4, adaptive="prune:p=0.5")])
def test_levers_validate(bad):
    with pytest.raises(ValueError, match="AttackConfig"):
        AttackConfig(**bad).validate()
