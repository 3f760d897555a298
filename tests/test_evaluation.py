"""Tests for diffula.evaluation that a notebook cannot hold: the ensemble rule on controlled readings, the Table 1
layout, the schema. The DeepFace back end is tested in test_deepface.py."""
import json
import math

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # shared 2-core machine

from diffula.evaluation import (METRIC_KEYS, FaceEvaluator, FaceReadout, SynthFacesEvaluator, aggregate, evaluate_user,
                                image_quality, lpips_distance, LPIPS_BACKBONES, mean_se, optimal_pairing,
                                reference_metrics, semantic_metrics, table1_markdown)
from diffula.synthfaces import SynthFaces


@pytest.fixture(scope="module")
def users():
    return SynthFaces(4, 9, seed=0, size=32)


# ---------------------------------------------------------------- image quality

def test_pairing_needs_a_square_cost_matrix():  # agreement with brute force is asserted in nbs/04_evaluation.ipynb
    with pytest.raises(ValueError, match="square"):
        optimal_pairing(np.zeros((2, 3)))


def test_image_quality_resizes_reconstructions_to_the_batch(users):
    x = users[0].images[:4]  # (4,3,32,32)
    up = torch.nn.functional.interpolate(x, size=(64, 48), mode="bilinear", align_corners=False)  # another size and aspect
    q = image_quality(up, x)
    assert q["kind"] == "sample-level" and q["mse_disamb"] <= q["mse"] < 0.01  # the same images, resampled
    q_other = image_quality(up.flip(0), x)
    assert q_other["mse"] > 10*q["mse"] and q_other["mse_disamb"] == pytest.approx(q["mse"], rel=1e-5)  # disambiguation undoes the flip
    with pytest.raises(ValueError, match="1 image"):
        image_quality(x[:2], x)


def test_lpips_distance_is_real_or_fails_naming_what_is_missing(users):
    x = users[0].images[:2]
    try:
        d = lpips_distance(x, x)
    except ImportError as e:  # no lpips package, or a torchvision that does not work with this torch
        assert "lpips" in str(e) and LPIPS_BACKBONES["alex"] in str(e) and "checkpoints" in str(e)
    except FileNotFoundError as e:  # the package imports, the backbone weights are not on disk
        assert LPIPS_BACKBONES["alex"] in str(e)
    else:
        assert d.shape == (2, 2) and d[0, 0] < 1e-4 < d[0, 1]


# ---------------------------------------------------------------- the ensemble rule on controlled readings

class FixedEvaluator(FaceEvaluator):
    """Readings chosen by the test: image i's face flag, label and age are read from its pixel values."""
    name = "fixed"

    def read(self, images, attributes=True):
        v = images[:, 0, 0, 0]  # channel 0 at (0, 0) encodes the face flag, channel 1 the gender, channel 2 the age / 100
        face = v > 0.5
        gender = [int(images[i, 1, 0, 0] > 0.5) for i in range(len(images))]
        race = [int(round(float(images[i, 1, 1, 1])*3)) for i in range(len(images))]
        emb = torch.nn.functional.normalize(images.flatten(1)[:, :4] + 1e-3, dim=1)
        return FaceReadout(face, emb, gender, race, images[:, 2, 0, 0]*100) if attributes else FaceReadout(face, emb)

    def guess(self, rng):
        return dict(gender=int(rng.integers(2)), race=int(rng.integers(4)), age=float(rng.uniform(20, 70)))


def _img(face, gender, age, race=0):
    x = torch.full((1, 3, 4, 4), 0.2)
    x[0, 0, 0, 0], x[0, 1, 0, 0], x[0, 2, 0, 0], x[0, 1, 1, 1] = float(face), float(gender), age/100, race/3
    return x


def test_ensemble_ignores_faceless_reconstructions_and_votes():
    ev = FixedEvaluator()
    batch = torch.cat([_img(1, 1, 30, 2)]*4)
    # 2 faces say gender 1 / race 2, aged 28 and 34; 3 faceless images say gender 0 / race 0, aged 60
    recon = torch.cat([_img(1, 1, 28, 2), _img(0, 0, 60), _img(1, 1, 34, 2), _img(0, 0, 60), _img(0, 0, 60)])
    m = semantic_metrics(recon, torch.cat([batch, _img(1, 1, 30, 2)]), ev, attributes=None, seed=0)
    assert m["face_rate"] == pytest.approx(2/5) and m["face_detected"] and not m["guessed"]
    assert (m["gender_pred"], m["race_pred"]) == (1, 2) and m["age_pred"] == pytest.approx(31.0, abs=1e-4)
    assert m["truth_source"] == "batch" and m["gender_true"] == 1 and m["age_true"] == pytest.approx(30.0, abs=1e-4)
    assert (m["gender_correct"], m["race_correct"]) == (1.0, 1.0) and m["age_error"] == pytest.approx(1.0, abs=1e-4)
    # without the rule every reconstruction counts: 2 of 5 right, age error (2 + 4 + 3*30)/5
    assert m["gender_acc_all"] == pytest.approx(2/5) and m["age_error_all"] == pytest.approx(96/5, abs=1e-3)


def test_no_face_falls_back_to_a_seeded_random_guess():
    ev = FixedEvaluator()
    batch = torch.cat([_img(1, 1, 30, 2)]*3)
    recon = torch.cat([_img(0, 1, 30, 2)]*3)  # the right attributes, but no face: they must not be used
    runs = [semantic_metrics(recon, batch, ev, seed=s) for s in range(60)]
    assert all(r["guessed"] and not r["face_detected"] for r in runs)
    assert semantic_metrics(recon, batch, ev, seed=7)["age_pred"] == runs[7]["age_pred"]  # seeded
    assert len({r["gender_pred"] for r in runs}) == 2 and len({r["race_pred"] for r in runs}) == 4  # really random
    assert 0.2 < np.mean([r["gender_correct"] for r in runs]) < 0.8


def test_vote_ties_are_broken_by_the_seed():
    ev = FixedEvaluator()
    batch = torch.cat([_img(1, 1, 30)]*2)
    recon = torch.cat([_img(1, 0, 30), _img(1, 1, 30)])  # one vote each
    preds = {semantic_metrics(recon, batch, ev, seed=s)["gender_pred"] for s in range(20)}
    assert preds == {0, 1}


def test_known_truth_is_used_when_the_evaluator_can_read_it(users):
    sev = SynthFacesEvaluator()
    u = users[2]
    m = semantic_metrics(u.images[8:9], u.images[:8], sev, attributes=u.attributes)
    assert m["truth_source"] == "known" and m["gender_true"] == u.attributes["gender"] and m["age_true"] == pytest.approx(u.attributes["age"])
    assert semantic_metrics(u.images[8:9], u.images[:8], sev, attributes={"identity": 1})["truth_source"] == "batch"


# ---------------------------------------------------------------- schema, aggregation, Table 1

def test_every_row_has_the_schema_and_is_json(users):
    sev = SynthFacesEvaluator()
    u = users[1]
    rows = [evaluate_user(u.images[8:9], u.images[:8], sev, attributes=u.attributes),
            evaluate_user(u.images[:8].flip(0), u.images[:8], sev, attributes=u.attributes),
            reference_metrics(u.images[:8], sev, attributes=u.attributes),
            evaluate_user(u.images[8:9], u.images[:8], sev, predict_attributes=False, distance=None)]
    for r in rows:
        assert list(r) == list(METRIC_KEYS)
        assert json.loads(json.dumps(r, allow_nan=False)) == r
    assert rows[1]["kind"] == "sample-level" and rows[1]["mse_disamb"] == 0.0 < rows[1]["mse"]
    assert rows[3]["gender_correct"] is None and rows[3]["feature_distance"] is None and rows[3]["similarity"] is not None


def test_aggregate_and_table_layout(users):
    sev = SynthFacesEvaluator()
    user_level = [evaluate_user(u.images[8:9], u.images[:8], sev, attributes=u.attributes) for u in users]
    sample_level = [evaluate_user(u.images[:8].roll(1, 0), u.images[:8], sev, attributes=u.attributes) for u in users]
    ref = [reference_metrics(u.images[:8], sev, attributes=u.attributes) for u in users]
    ag = aggregate(user_level)
    vals = [r["similarity"] for r in user_level]
    assert ag["similarity"] == pytest.approx((np.mean(vals), np.std(vals, ddof=1)/2, 4))
    assert "truth_source" not in ag and ag["face_detected"][0] == 1.0
    t = table1_markdown({"held-out": user_level, "rolled batch": sample_level}, ref, digits=3)
    lines = [l for l in t.splitlines() if l.startswith("| ")]
    names = [l.split("|")[1].strip() for l in lines]
    assert names == ["(a) Image quality", "Intra-user", "held-out", "rolled batch", "w/ disambiguation",
                     "(b) Semantics", "Original batch", "held-out", "rolled batch", "w/ ensemble"]
    disamb = lines[names.index("w/ disambiguation")]
    assert disamb.split("|")[2].strip().startswith(f"{aggregate(sample_level)['mse_disamb'][0]:.3f}")
    assert all(l.rstrip().endswith("| 4 |") for l in lines if not l.startswith("| (")), t
    m, se, n = mean_se([None, 2.0])
    assert (m, n) == (2.0, 1) and math.isnan(se)
