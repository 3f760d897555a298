"""Tests for diffula.baselines and diffula.generator that the notebooks cannot hold: the generator loader's messages,
exact resumption of generator training, tiny end-to-end runs of both baselines, the generator left untouched, and CUDA paths."""
import json

import pytest
import torch
from safetensors.torch import save_file

from diffula.attack_core import AttackResult
from diffula.baselines import GIASConfig, IGConfig, gias, inverting_gradients
from diffula.generator import FaceGenerator, GEN_WEIGHTS, load_generator, train_generator
from diffula.formulation import client_gradient, resnet18
from diffula.synthfaces import SynthFaces


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def case():
    "A tiny threat-model case: one SynthFaces user at 16 px, B = 2, a ResNet-18 in eval mode, its gradient."
    user = SynthFaces(1, 2, seed=0, size=16, task_label="identity")[0]
    model = resnet18(num_classes=2, seed=0, input_size=16)
    return user, model, client_gradient(model, user.images, user.labels, "eval")


def tiny_generator(size=16, seed=0):
    torch.manual_seed(seed)
    return FaceGenerator(z_dim=8, width=16, size=size).eval().requires_grad_(False)


def test_loader_names_missing_file_and_regenerating_function(tmp_path, monkeypatch):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError) as e: load_generator(missing)
    assert str(missing) in str(e.value) and "diffula.generator.train_generator()" in str(e.value)
    assert "nbs/01c_generator.ipynb" in str(e.value)
    monkeypatch.setenv("DIFFULA_DATA", str(tmp_path))  # the default location, emptied
    with pytest.raises(FileNotFoundError, match=GEN_WEIGHTS): load_generator()


def test_gias_without_generator_loads_the_shipped_one_or_says_how_to_make_it(case, tmp_path, monkeypatch):
    user, model, observed = case
    monkeypatch.setenv("DIFFULA_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train_generator"):
        gias(observed, model, None, GIASConfig.smoke(), labels=user.labels)


def test_loader_rejects_a_file_without_architecture(tmp_path):
    p = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(ValueError, match="not a FaceGenerator file"): load_generator(p)


def test_train_generator_resumes_exactly_and_loads(tmp_path):
    kw = dict(steps=4, batch_size=2, z_dim=8, width=16, d_width=4, size=16, save_every=2, log_every=1, progress=False)
    a = train_generator(tmp_path / "a.safetensors", state_path=tmp_path / "a.pt", stop_at=2, **kw)
    assert json.loads(a.with_suffix(".json").read_text())["training"]["steps_done"] == 2
    a = train_generator(tmp_path / "a.safetensors", state_path=tmp_path / "a.pt", **kw)  # resumes at step 2
    b = train_generator(tmp_path / "b.safetensors", state_path=tmp_path / "b.pt", **kw)  # in one go
    info = json.loads(a.with_suffix(".json").read_text())["training"]
    assert info["steps_done"] == 4 and len(info["log"]["d_loss"]) == 4 and info["arch"] == dict(z_dim=8, width=16, size=16)
    ga, gb = load_generator(a), load_generator(b)
    assert ga.arch == dict(z_dim=8, width=16, size=16)
    for (n, p), q in zip(ga.state_dict().items(), gb.state_dict().values()): assert torch.equal(p, q), n
    assert not torch.equal(ga.fc.weight, tiny_generator().fc.weight)  # it trained


def test_ig_end_to_end_reduces_the_distance(case):
    user, model, observed = case
    r = inverting_gradients(observed, model, IGConfig.smoke(steps=30, tv=0.0), batch_size=2)
    assert isinstance(r, AttackResult) and r.method == "ig"
    assert r.images.shape == (2, 3, 16, 16) and 0 <= r.images.min() and r.images.max() <= 1
    assert torch.equal(r.labels, user.labels.sort().values)  # recovered, sorted by class
    d = r.history["grad_distance"]
    assert len(d) == 30 and min(d[-5:]) < d[0]
    assert r.budget.steps == 30 and r.budget.model_forward == 30 and r.budget.model_backward == 60


def test_ig_restarts_pick_the_best_and_count_scoring(case):
    user, model, observed = case
    r = inverting_gradients(observed, model, IGConfig.smoke(steps=3, restarts=2), labels=user.labels)
    assert len(r.restart_distances) == 2 and r.seed == int(torch.tensor(r.restart_distances).argmin())
    assert r.budget.steps == 6 and r.budget.model_forward == 6 + 2 and r.budget.model_backward == 12 + 2
    assert r.budget.restarts == 2


def test_gias_end_to_end_with_a_generator_of_another_size(case):
    user, model, observed = case
    G = tiny_generator(size=8)  # smaller than the model's 16 px: its output is resized
    before = {k: v.clone() for k, v in G.state_dict().items()}
    r = gias(observed, model, G, GIASConfig.smoke(latent_steps=4, param_steps=4), labels=user.labels)
    assert r.images.shape == (2, 3, 16, 16) and r.latent_images.shape == (2, 3, 16, 16) and r.latents.shape == (2, 8)
    assert 0 <= r.images.min() and r.images.max() <= 1
    assert r.history["stage"] == ["latent"] * 4 + ["param"] * 4 and r.budget.generator_backward == 8 * 2
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before.items())  # the caller's generator is untouched
    assert not any(p.requires_grad for p in G.parameters()) and all(p.grad is None for p in model.parameters())


def test_gias_param_reg_pulls_copies_towards_the_pretrained_generator(case):
    "With a large λ_w the copies stay closer to the pretrained weights, so stage 2 changes the images less."
    user, model, observed = case
    G = tiny_generator()
    cfg = dict(latent_steps=2, param_steps=6, param_lr=1e-2)
    free = gias(observed, model, G, GIASConfig.smoke(**cfg, param_reg=0.0), labels=user.labels)
    held = gias(observed, model, G, GIASConfig.smoke(**cfg, param_reg=1e6), labels=user.labels)
    assert torch.equal(free.latent_images, held.latent_images)
    change = lambda r: (r.images - r.latent_images).abs().mean().item()
    assert change(held) < change(free)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_absent_is_a_clear_error(case):
    user, model, observed = case
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        inverting_gradients(observed, model, IGConfig.smoke(device="cuda"), labels=user.labels)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        gias(observed, model, tiny_generator(), GIASConfig.smoke(device="cuda"), labels=user.labels)


@pytest.mark.cuda
def test_both_run_on_cuda_and_return_cpu_tensors(case):
    user, model, observed = case
    r = inverting_gradients(observed, model, IGConfig.smoke(device="cuda"), labels=user.labels)
    g = gias(observed, model, tiny_generator(), GIASConfig.smoke(device="cuda"), labels=user.labels)
    assert r.images.device.type == "cpu" and g.images.device.type == "cpu"
    assert r.config.device.startswith("cuda") and g.config.device.startswith("cuda")
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays where it was
