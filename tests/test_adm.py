"The ADM checkpoint converter (diffula.adm) against the reference implementation, guided-diffusion-sdk."
import warnings
import pytest
import torch
from torch import nn
from diffula.adm import adm_config, adm_to_diffusers
from diffula.prior import load_prior

gd = pytest.importorskip("guided_diffusion.unet", reason="test-only dependency guided-diffusion-sdk")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "Tiny models on a small shared CPU: one thread avoids OpenMP spin-waiting (restored afterwards)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_adm(seed=0, **kw):
    "A tiny random ADM UNet with the FFHQ-256 block structure (res up/down, scale-shift, deep attention, learn_sigma)."
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
    "The full FFHQ-256 ffhq.pt architecture (Baranchuk et al.) maps key for key, shape for shape (meta device)."
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
