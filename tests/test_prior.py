"Tests for diffula.prior: Eq. 9/13 and g_p (Algorithm 1), denoising, loading and the ADM converter."
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import warnings
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from diffusers import UNet2DModel, DDPMScheduler
from diffula.prior import DiffusionPrior, load_prior, adm_to_diffusers, adm_config, gradient_agreement


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "Tiny models on a small shared CPU: one thread avoids OpenMP spin-waiting (restored afterwards)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_unet(size=8, out_channels=3, seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=out_channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4).eval()


@pytest.fixture(scope="module")
def prior():
    return DiffusionPrior(tiny_unet(), DDPMScheduler(num_train_timesteps=1000))


def x0_like(prior, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, prior.resolution, prior.resolution, generator=g)*2 - 1


def test_loss_is_eq13(prior):
    x0 = x0_like(prior); n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 700])
    ac = prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = ac.sqrt()*x0 + (1 - ac).sqrt()*n                                  # Eq. 9 by hand
    with torch.no_grad(): ref = (n - prior.eps_model(xt, t).sample).pow(2).flatten(1).sum(1)
    got = prior.loss(x0, t, n)
    assert got.shape == (2,)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prior.loss(x0, t, n, reduction="mean"), ref/x0[0].numel(), rtol=1e-5, atol=1e-6)


def test_generator_determinism(prior):
    x0 = x0_like(prior)
    a = prior.loss(x0, 300, generator=torch.Generator().manual_seed(5))
    b = prior.loss(x0, 300, generator=torch.Generator().manual_seed(5))
    c = prior.loss(x0, 300, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_full_grad_matches_finite_differences():
    "g_p = ∇_x0 ‖ε - ε_θ(x_t,t)‖² through the UNet (Algorithm 1), checked by central differences in float64."
    p = DiffusionPrior(tiny_unet(size=8), DDPMScheduler(num_train_timesteps=1000)).to(torch.float64)
    x0 = x0_like(p, B=1).double(); n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for t in (50, 600):
        g = p.grad(x0, t, n)
        d = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64); d /= d.norm()
        h = 1e-5
        with torch.no_grad(): fd = (p.loss(x0 + h*d, t, n) - p.loss(x0 - h*d, t, n)).sum()/(2*h)
        assert torch.isclose((g*d).sum(), fd, rtol=1e-6, atol=1e-8), (t, (g*d).sum().item(), fd.item())
        # and a few coordinates one by one
        for idx in [(0, 0, 1, 2), (0, 2, 7, 3)]:
            e = torch.zeros_like(x0); e[idx] = 1
            with torch.no_grad(): fdi = (p.loss(x0 + h*e, t, n) - p.loss(x0 - h*e, t, n)).sum()/(2*h)
            assert torch.isclose(g[idx], fdi, rtol=1e-5, atol=1e-8)


def test_jacobian_free_closed_form(prior):
    x0 = x0_like(prior); n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 900])
    g = prior.grad(x0, t, n, jacobian=False)
    ac = prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad(): e = prior.eps_model(ac.sqrt()*x0 + (1 - ac).sqrt()*n, t).sample
    torch.testing.assert_close(g, 2*ac.sqrt()*(e - n), rtol=1e-5, atol=1e-6)   # 2√ᾱ (ε_θ - ε)
    torch.testing.assert_close(prior.grad(x0, t, n, jacobian=False, reduction="mean"), g/x0[0].numel())


def test_jacobian_free_equals_full_for_identity_eps():
    "If ε_θ(x_t) = x_t (J = I), the Jacobian-free form is exact: same sign convention as the full gradient."
    class Ident(nn.Module):
        config = type("C", (), dict(sample_size=4, in_channels=3, out_channels=3))()
        def __init__(self): super().__init__(); self.w = nn.Parameter(torch.ones(()))
        def forward(self, x, t): return x*self.w
    p = DiffusionPrior(Ident(), DDPMScheduler(num_train_timesteps=1000))
    x0 = torch.randn(2, 3, 4, 4); n = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(p.grad(x0, 400, n), p.grad(x0, 400, n, jacobian=False), rtol=1e-5, atol=1e-6)
    cos, ratio = gradient_agreement(p, x0, [10, 500], draws=2)
    assert cos.shape == (2, 2) and torch.allclose(cos, torch.ones(2, 2), atol=1e-5)
    assert torch.allclose(ratio, torch.ones(2, 2), atol=1e-5)


def test_learned_variance_keeps_eps_half():
    u = tiny_unet(out_channels=6)
    p = DiffusionPrior(u, DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range"))
    assert p.learned_variance
    x = x0_like(p)
    with torch.no_grad(): full = u(x, torch.tensor([5, 5])).sample
    torch.testing.assert_close(p.eps(x, 5), full[:, :3])
    out = p.denoise(x, 20, generator=torch.Generator().manual_seed(0), progress=False)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_resolution_helpers(prior):
    x = torch.rand(3, 3, 32, 32)
    xp = prior.to_prior(x)
    assert xp.shape == (3, 3, prior.resolution, prior.resolution)
    assert xp.min() >= -1 - 1e-6 and xp.max() <= 1 + 1e-6
    back = prior.from_prior(xp, 32)
    assert back.shape == x.shape
    c = torch.full((1, 3, 32, 32), 0.3)                    # constants survive the round trip
    torch.testing.assert_close(prior.from_prior(prior.to_prior(c), 32), c)


def test_bad_inputs(prior):
    x0 = x0_like(prior)
    with pytest.raises(ValueError, match="to_prior"): prior.loss(torch.zeros(2, 3, 16, 16), 10)
    with pytest.raises(ValueError, match=r"\[0, 999\]"): prior.loss(x0, 1000)
    with pytest.raises(ValueError, match="shape"): prior.loss(x0, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="method"): prior.denoise(x0, 10, method="euler")
    with pytest.raises(ValueError, match="t_start"): prior.denoise(x0, -1)
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionPrior(tiny_unet(), DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction"))


def test_denoise_ddpm_and_ddim(prior):
    x = x0_like(prior)
    a = prior.denoise(x, 10, generator=torch.Generator().manual_seed(1), progress=False)
    b = prior.denoise(x, 10, generator=torch.Generator().manual_seed(1), progress=False)
    c = prior.denoise(x, 10, generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    d1 = prior.denoise(x, 200, method="ddim", steps=5, progress=False)
    d2 = prior.denoise(x, 200, method="ddim", steps=5, progress=False)
    assert torch.equal(d1, d2) and torch.isfinite(d1).all()
    # t_start=0 is one final step: x_0 = (x - √(1-ᾱ_0) ε_θ)/√ᾱ_0, clipped to [-1,1] by the scheduler
    z = prior.denoise(x, 0, progress=False)
    ac0 = prior.scheduler.alphas_cumprod[0]
    with torch.no_grad(): ref = ((x - (1 - ac0).sqrt()*prior.eps(x, 0))/ac0.sqrt()).clamp(-1, 1)
    torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-5)


def test_load_diffusers_folders(tmp_path):
    u = tiny_unet(size=8)
    (tmp_path/"pipe").mkdir()
    u.save_pretrained(tmp_path/"pipe"/"unet")
    DDPMScheduler(num_train_timesteps=500).save_pretrained(tmp_path/"pipe"/"scheduler")
    p = load_prior(tmp_path/"pipe")
    assert p.resolution == 8 and p.num_train_timesteps == 500
    u.save_pretrained(tmp_path/"bare")                                   # bare UNet folder
    p2 = load_prior(str(tmp_path/"bare"))
    assert p2.num_train_timesteps == 1000
    x = x0_like(p2)
    with torch.no_grad(): torch.testing.assert_close(p2.eps(x, 3), u(x, torch.tensor([3, 3])).sample)
    (tmp_path/"empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a diffusers model folder"): load_prior(tmp_path/"empty")


def test_load_missing_assets(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"): load_prior(tmp_path/"ffhq.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path/"hf"))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"): load_prior("google/ddpm-ema-celebahq-256")
    monkeypatch.setenv("DIFFULA_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SynthFaces prior"): load_prior("synthfaces")


# --- guided-diffusion (ADM) converter, against the reference implementation -------------------------------------
gd = pytest.importorskip("guided_diffusion.unet", reason="test-only dependency guided-diffusion-sdk")


def tiny_adm(seed=0, **kw):
    "A tiny random ADM UNet with the FFHQ-256 block structure (res up/down, scale-shift, attention in the deep levels, learn_sigma)."
    torch.manual_seed(seed)
    cfg = dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=2,
               attention_resolutions=(2, 4), channel_mult=(1, 1, 2), num_head_channels=16,
               use_scale_shift_norm=True, resblock_updown=True)
    cfg.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = gd.UNetModel(**cfg).eval()
    for p in m.parameters(): nn.init.normal_(p, std=0.05)   # ADM zero-inits out convs, which would hide mapping errors
    return m


@pytest.mark.parametrize("kw", [{}, dict(use_new_attention_order=True),
                                dict(resblock_updown=False, use_scale_shift_norm=False, out_channels=3)],
                         ids=["ffhq-structure", "new-attention-order", "conv-resample"])
def test_adm_converter_matches_reference(kw):
    m = tiny_adm(**kw)
    conv = adm_to_diffusers(m.state_dict(), image_size=16, num_head_channels=16,
                            legacy_attention=not kw.get("use_new_attention_order", False))
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 871])
    with torch.no_grad(): ref, got = m(x, t), conv(x, t).sample
    assert (ref - got).abs().max() < 1e-5
    cfg = adm_config(m.state_dict(), 16, 16)
    assert cfg["num_res_blocks"] == 2 and cfg["channel_mult"] == (1, 1, 2)
    assert cfg["resblock_updown"] == kw.get("resblock_updown", True)


def test_adm_checkpoint_roundtrip(tmp_path):
    m = tiny_adm()
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, tmp_path/"tiny.pt")
    p = load_prior(tmp_path/"tiny.pt", image_size=16, num_head_channels=16)
    assert p.learned_variance and p.scheduler.config.variance_type == "learned_range"
    x = torch.rand(1, 3, 16, 16)*2 - 1
    with torch.no_grad(): ref = m(x, torch.tensor([100]))[:, :3]
    assert (p.eps(x, 100) - ref).abs().max() < 1e-5


def test_adm_bad_state_dict():
    with pytest.raises(ValueError, match="not a guided-diffusion"): adm_to_diffusers({"foo": torch.zeros(1)})
    sd = tiny_adm().state_dict(); sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="not converted"): adm_to_diffusers(sd, 16, 16)


def test_adm_ffhq256_structure_maps_completely():
    "The full FFHQ-256 ffhq.pt architecture (Baranchuk et al.) maps key-for-key and shape-for-shape (on the meta device)."
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        m = gd.UNetModel(image_size=256, in_channels=3, model_channels=256, out_channels=6, num_res_blocks=2,
                         attention_resolutions=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64,
                         use_scale_shift_norm=True, resblock_updown=True)
        sd = m.state_dict()
        conv = adm_to_diffusers(sd)                  # raises on any unconverted tensor or shape mismatch
    cfg = adm_config(sd)
    assert cfg["attention_resolutions"] == (32, 16, 8) and cfg["channel_mult"] == (1, 1, 2, 2, 4, 4)
    assert cfg["learn_sigma"] and cfg["resblock_updown"] and cfg["use_scale_shift_norm"]
    assert sum(p.numel() for p in conv.parameters()) == sum(v.numel() for v in sd.values())
    assert conv.config.sample_size == 256 and conv.config.out_channels == 6
