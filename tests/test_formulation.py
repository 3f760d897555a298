"""Stage 00: the federated model, the client's gradient, label recovery, layers and gradient distances."""
import pytest
import torch

from diffula.formulation import (check_gradients, client_gradient, dlg_net, gradient_distance, invert_gradient,
                                 label_recovery_accuracy, labels_from_counts, model_layers, psnr, recover_labels,
                                 resnet18, sample_face, smooth_images)


@pytest.fixture(scope="module")
def model():
    return resnet18(seed=0)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return smooth_images(6, 64, g), torch.tensor([0, 1, 1, 0, 1, 1])


def test_resnet18_parameter_count_matches_standard():
    assert sum(p.numel() for p in resnet18(num_classes=1000).parameters()) == 11_689_512


def test_resnet18_seeded(model):
    assert torch.equal(resnet18(seed=0).fc.weight, model.fc.weight)
    assert not torch.equal(resnet18(seed=1).fc.weight, model.fc.weight)


def test_client_gradient_leaves_model_untouched(model, batch):
    x, y = batch
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = client_gradient(model, x, y)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [g.shape for g in grads] == [p.shape for p in model.parameters()]
    assert all(g.abs().sum() > 0 for g in grads[-2:])


def test_client_gradient_uses_batch_statistics(model, batch):
    x, y = batch
    # in training mode BatchNorm couples the batch: one image's gradient changes with its batch-mates
    g_full = client_gradient(model, x, y)
    g_other = client_gradient(model, torch.cat([x[:3], x[3:].flip(-1)]), y)
    assert not torch.allclose(g_full[0], g_other[0])


@pytest.mark.parametrize("bad,msg", [
    (lambda x, y: (x * 255, y), "[0, 1]"),
    (lambda x, y: (x[..., :32, :32], y), "64x64"),
    (lambda x, y: (x, y[:2]), "shape"),
    (lambda x, y: (x, y + 5), "labels must lie"),
    (lambda x, y: (x.clone().fill_(float("nan")), y), "NaN"),
])
def test_client_gradient_bad_input(model, batch, bad, msg):
    with pytest.raises(ValueError, match=None) as e:
        client_gradient(model, *bad(*batch))
    assert msg in str(e.value)


def test_check_gradients_rejects_mismatch_and_nonfinite(model, batch):
    grads = client_gradient(model, *batch)
    with pytest.raises(ValueError, match="fc.weight"):
        check_gradients(grads, resnet18(num_classes=3))
    with pytest.raises(ValueError, match="parameters"):
        check_gradients(grads[:5], model)
    bad = list(grads); bad[3] = bad[3] * float("inf")
    with pytest.raises(ValueError, match="infinite"):
        check_gradients(bad, model)


def test_recover_labels_exact_for_one_image(model, batch):
    x, _ = batch
    for c in (0, 1):
        counts = recover_labels(client_gradient(model, x[:1], torch.tensor([c])), model, 1)
        assert counts.tolist() == [1 - c, c]


def test_recover_labels_batches_of_30():
    # measured over 50 seeds: exact 94%, always within one (notebook 00, slow cell); 8 seeds here
    acc = label_recovery_accuracy(n_seeds=8, batch_size=30)
    assert acc["within_one"] == 1.0 and acc["exact"] >= 0.75, acc


def test_labels_from_counts_roundtrip():
    assert labels_from_counts(torch.tensor([3, 0, 2])).tolist() == [0, 0, 0, 2, 2]


def test_model_layers_forward_order(model):
    layers = model_layers(model)
    assert len(layers) == 21 and layers[0].name == "conv1" and layers[-1].name == "fc"
    names = [l.name for l in layers]
    assert names.index("layer2.0.conv2") < names.index("layer2.0.downsample.0") < names.index("layer2.1.conv1")
    assert sorted(i for l in layers for i in l.params) == list(range(len(list(model.parameters()))))


def test_gradient_distance_properties(model, batch):
    grads = client_gradient(model, *batch)
    other = client_gradient(model, batch[0].flip(-2), batch[1])
    assert gradient_distance(grads, grads).abs().item() < 1e-6
    assert gradient_distance(grads, grads, "l2").item() == 0
    d = gradient_distance(other, grads).item()
    assert 0 < d <= 2
    layers = model_layers(model)
    w = torch.zeros(len(layers)); w[-1] = 1
    d_fc = gradient_distance(other, grads, layer_weights=w, layers=layers).item()
    assert d_fc != pytest.approx(d)
    with pytest.raises(ValueError, match="non-negative"):
        gradient_distance(grads, grads, layer_weights=-torch.ones(len(grads)))


def test_gradient_distance_differentiable():
    net = dlg_net(seed=0)
    x = torch.rand(1, 3, 32, 32)
    obs = client_gradient(net, x, torch.tensor([1]))
    from diffula.formulation import candidate_gradient
    z = torch.rand_like(x, requires_grad=True)
    d = gradient_distance(candidate_gradient(net, z, torch.tensor([1])), obs)
    (g,) = torch.autograd.grad(d, z)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_single_image_dlg_recovers_face():
    private = sample_face(32)
    net = dlg_net(seed=0)
    obs = client_gradient(net, private, torch.tensor([1]))
    recon, hist = invert_gradient(net, obs, torch.tensor([1]), steps=6, seed=1, progress=False)
    assert hist[-1] < 1e-2 * hist[0]
    assert psnr(recon, private) > psnr(torch.rand_like(private), private) + 3


def test_model_layers_leaves_the_global_rng_alone():
    model = resnet18(num_classes=2, seed=0, input_size=32)
    torch.manual_seed(123); expected = torch.rand(3)
    torch.manual_seed(123); model_layers(model); got = torch.rand(3)
    assert torch.equal(expected, got)


def test_layer_cosine_is_per_layer():
    model = resnet18(num_classes=2, seed=0, input_size=32)
    layers = model_layers(model)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 1, 0])
    obs = client_gradient(model, x, y)
    other = client_gradient(model, torch.rand(4, 3, 32, 32, generator=g), y)
    assert gradient_distance(obs, obs, "layer_cosine", layers=layers).item() < 1e-6
    d = gradient_distance(other, obs, "layer_cosine", layers=layers).item()
    scaled = [t * 50 if i >= len(obs) - 2 else t for i, t in enumerate(obs)]   # the classifier only
    assert abs(gradient_distance(other, scaled, "layer_cosine", layers=layers).item() - d) < 1e-5
    assert abs(gradient_distance(other, scaled).item() - gradient_distance(other, obs).item()) > 1e-3
    w = torch.zeros(len(layers)); w[3] = 1.0                                  # one layer alone: 1 - its cosine
    c = torch.nn.functional.cosine_similarity(torch.cat([other[k].flatten() for k in layers[3].params]),
                                              torch.cat([obs[k].flatten() for k in layers[3].params]), dim=0)
    assert abs(gradient_distance(other, obs, "layer_cosine", layer_weights=w, layers=layers).item() - (1 - c.item())) < 1e-5
    with pytest.raises(ValueError, match="weights"):
        gradient_distance(other, obs, "layer_cosine", layer_weights=torch.ones(3), layers=layers)
