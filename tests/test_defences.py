"""Tests for diffula.defences: each transform against FedSGD where they must agree, and what the notebook does not check
(the DP noise's scale, FedAvg's mini-batch order against hand-written SGD, pruning's exact count, aggregation's mean)."""
import math

import pytest
import torch
import torch.nn.functional as F

from diffula.defences import (aggregate_gradients, dp_gradient, fedavg_update, observe, per_example_gradients,
                              prune_gradient)
from diffula.formulation import client_gradient, resnet18

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def case():
    model = resnet18(num_classes=2, seed=0, input_size=16)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 16, 16, generator=g), torch.tensor([0, 1, 1, 0, 1, 1])
    return model, x, y, client_gradient(model, x, y)


def flat(gs): return torch.cat([t.flatten() for t in gs])


def test_dp_without_clipping_or_noise_is_fedsgd(case):
    model, x, y, g = case
    assert torch.allclose(flat(dp_gradient(model, x, y, clip=math.inf, sigma=0.0)), flat(g), atol=1e-6)
    assert torch.allclose(flat(observe(model, x, y, "dp:clip=inf,sigma=0")), flat(g), atol=1e-6)


def test_per_example_gradients_average_to_the_batch_gradient_and_leave_the_model_as_found(case):
    model, x, y, g = case
    model.train()
    per = per_example_gradients(model, x, y)
    assert model.training and all(p.shape[0] == 6 for p in per)
    model.eval()
    assert torch.allclose(flat([p.mean(0) for p in per]), flat(g), atol=1e-6)


def test_dp_noise_has_std_sigma_clip_over_b(case):
    model, x, y, g = case
    clean = flat(dp_gradient(model, x, y, clip=2.0, sigma=0.0))
    noisy = flat(dp_gradient(model, x, y, clip=2.0, sigma=0.5, generator=torch.Generator().manual_seed(1)))
    assert (noisy - clean).std().item() == pytest.approx(0.5 * 2.0 / 6, rel=0.01)  # 11 M draws: std within 1 %


def test_prune_keeps_exactly_the_largest_entries():
    t = torch.tensor([0.1, -5.0, 2.0, -0.3, 4.0, 0.7, -1.0, 3.0, 0.2, 0.05])
    for p, kept in ((0.0, 10), (0.5, 5), (0.9, 1), (0.99, 1)):
        (q,) = prune_gradient([t], p)
        assert int((q != 0).sum()) == kept
        assert set(q.nonzero().flatten().tolist()) == set(t.abs().topk(kept).indices.tolist())
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\)"): prune_gradient([t], 1.0)


def test_fedavg_is_sgd_on_cycling_minibatches(case):
    model, x, y, g = case
    assert torch.allclose(flat(fedavg_update(model, x, y, steps=1, lr=0.3)), 0.3 * flat(g), atol=1e-7)
    # by hand: three steps of 4 images, cycling through the 6: images 0-3, 4,5,0,1, 2-5
    w = [p.detach().clone() for p in model.parameters()]
    w0 = [p.clone() for p in w]
    m = resnet18(num_classes=2, seed=0, input_size=16).eval()
    for idx in ([0, 1, 2, 3], [4, 5, 0, 1], [2, 3, 4, 5]):
        with torch.no_grad():
            for p, v in zip(m.parameters(), w): p.copy_(v)
        loss = F.cross_entropy(m(x[idx]), y[idx])
        gs = torch.autograd.grad(loss, list(m.parameters()))
        w = [v - 0.3 * gk for v, gk in zip(w, gs)]
    expected = [a - b for a, b in zip(w0, w)]
    assert torch.allclose(flat(fedavg_update(model, x, y, steps=3, lr=0.3, batch=4)), flat(expected), atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w0))  # the global model is left unchanged


def test_aggregate_of_one_user_is_fedsgd_and_of_two_their_mean(case):
    model, x, y, g = case
    assert torch.equal(flat(observe(model, x, y, "aggregate:users=1")), flat(g))
    x2, y2 = x.flip(0), y.flip(0) * 0
    g2 = client_gradient(model, x2, y2)
    assert torch.allclose(flat(observe(model, x, y, "aggregate:users=2", co_users=[(x2, y2)])),
                          flat(aggregate_gradients([g, g2])), atol=1e-7)
    assert torch.allclose(flat(aggregate_gradients([g, g2])), (flat(g) + flat(g2)) / 2, atol=1e-7)


def test_bad_observations_fail_with_one_line(case):
    model, x, y, g = case
    with pytest.raises(ValueError, match="eval mode"): observe(model, x, y, "dp:sigma=0.1", bn_mode="train")
    with pytest.raises(ValueError, match="needs 1 other users"): observe(model, x, y, "aggregate:users=2")
    with pytest.raises(ValueError, match="unknown kind"): observe(model, x, y, "secagg")
    with pytest.raises(ValueError, match="batch must lie in 1..6"): fedavg_update(model, x, y, batch=7)


def test_the_adaptive_attacker_is_a_config_a_case_and_a_flag():
    from diffula.attack import AttackConfig
    from diffula.case import Case
    from diffula.cli import build_parser, case_from_args
    from diffula.live import attack_command
    assert AttackConfig(adaptive="prune:p=0.9").validate().adaptive == "prune:p=0.9"
    with pytest.raises(ValueError, match="AttackConfig: adaptive: defence prune: p must be in"):
        AttackConfig(adaptive="prune:p=2").validate()
    assert Case(adaptive=False).key() == Case().key() != Case(defence="prune:p=0.9", adaptive=True).key()
    a = build_parser().parse_args(["attack", "--defence", "prune:p=0.9", "--adaptive"])
    case = case_from_args(a, method=a.method, user=a.user)
    assert case.adaptive and case.defence == "prune:p=0.9"
    b = build_parser().parse_args(attack_command(case).split()[1:])        # the explorer's command line round-trips
    assert case_from_args(b, method=b.method, user=b.user) == case


def test_the_adaptive_candidate_applies_the_mask_and_stays_differentiable(case):
    from diffula.defences import adaptive_candidate
    model, x, y, g = case
    obs = observe(model, x, y, "prune:p=0.9")
    xr = x.clone().requires_grad_(True)
    cand = adaptive_candidate(model, xr, y, "prune:p=0.9", obs)
    assert bool(((flat(cand) != 0) <= (flat(obs) != 0)).all())
    (gx,) = torch.autograd.grad(flat(cand).pow(2).sum(), xr)
    assert float(gx.abs().sum()) > 0


def test_aggregation_over_folder_users_draws_other_users_of_the_source(tmp_path):
    "aggregate:users=U on a user folder: U - 1 of its other users (never the attacked or the compared one), seeded."
    import numpy as np
    from PIL import Image
    from diffula.case import Case
    from diffula.pipeline import client_update, co_users, load_users, other_user_index
    rng = np.random.default_rng(0)
    for u in range(8):                                    # 8 users of 3 images, each user its own flat colour
        (tmp_path/f"user{u}").mkdir()
        for j in range(3):
            px = np.clip(rng.normal(30*u, 3, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(tmp_path/f"user{u}"/f"{j}.png")
    case = Case(data=f"folder:{tmp_path}", user=1, batch_size=2, image_size=16, defence="aggregate:users=3")
    mates = co_users(case)
    assert len(mates) == 2 and all(x.shape == (2, 3, 16, 16) for x, _ in mates)
    user, other = load_users(case)
    colour = lambda x: round(float(x.mean()) * 255 / 30)              # which user an image batch is
    picked = {colour(x) for x, _ in mates}
    assert len(picked) == 2 and not picked & {colour(user.images), colour(other.images)}
    assert [colour(x) for x, _ in co_users(case)] == [colour(x) for x, _ in mates]       # the same case, the same round
    model, observed = client_update(case, user)                      # the server sees the mean of the three updates
    fed = [client_update(Case(data=case.data, user=1, batch_size=2, image_size=16), user)[1]]
    fed += [client_gradient(model, x, y) for x, y in mates]
    mean = [torch.stack(ts).mean(0) for ts in zip(*fed)]
    assert torch.allclose(flat(observed), flat(mean), atol=1e-6)
    with pytest.raises(ValueError, match="needs 7 users besides user 1"):
        co_users(Case(data=f"folder:{tmp_path}", user=1, batch_size=2, image_size=16, defence="aggregate:users=8"))
