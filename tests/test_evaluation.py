"""Tests for diffula.evaluation that a notebook cannot hold: the ensemble rule on controlled readings, the Table 1
layout, the schema, and the DeepFace back end on real photos that packages ship (needs the `faces` extra)."""
import importlib.util
import itertools
import json
import math

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # shared 2-core machine

from diffula.evaluation import (METRIC_KEYS, FACES_EXTRA, DLIB_WEIGHTS, FaceEvaluator, FaceReadout, SynthFacesEvaluator,
                                DeepFaceEvaluator, aggregate, evaluate_user, image_quality, install_dlib_weights,
                                lpips_distance, LPIPS_BACKBONES, mean_se, mse_matrix, optimal_pairing, reference_metrics,
                                semantic_metrics, synth_feature_distance, table1_markdown)
from diffula.synthfaces import SynthFaces


@pytest.fixture(scope="module")
def users():
    return SynthFaces(4, 9, seed=0, size=32)


# ---------------------------------------------------------------- image quality

def test_pairing_matches_brute_force_on_mse_of_real_images(users):
    rng = np.random.default_rng(1)
    for B in (2, 4, 7):
        x = users[0].images[:B]
        recon = torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(B))*0.5 + x[rng.permutation(B)]*0.5
        M = mse_matrix(recon, x).double().numpy()
        pi = optimal_pairing(M)
        best = min(sum(M[i, p[i]] for i in range(B)) for p in itertools.permutations(range(B)))
        assert M[np.arange(B), pi].sum() == pytest.approx(best, rel=1e-9)
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


def test_synth_feature_distance_is_not_called_lpips_and_orders_users(users):
    x, y = users[0].images[:8], users[1].images[:8]
    d_same, d_other = synth_feature_distance(x, x), synth_feature_distance(x, y)
    off = ~torch.eye(8, dtype=torch.bool)
    assert d_same[off].mean() < d_other.mean()
    q = image_quality(users[0].images[8:9], x, synth_feature_distance)
    assert q["feature_metric"] == "synth_feature_distance" and "lpips" not in q["feature_metric"].lower()


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


# ---------------------------------------------------------------- DeepFace back end on real photos

needs_faces = pytest.mark.skipif(
    importlib.util.find_spec("deepface") is None or importlib.util.find_spec("face_recognition_models") is None
    or importlib.util.find_spec("dlib") is None,
    reason=f"the DeepFace back end needs {FACES_EXTRA}")


def _photo(a):
    return torch.from_numpy(np.array(a[..., :3])).permute(2, 0, 1)[None].float()/255


@pytest.fixture(scope="module")
def dfe(tmp_path_factory):
    return DeepFaceEvaluator(home=tmp_path_factory.mktemp("deepface"))


@needs_faces
def test_install_dlib_weights_is_idempotent(tmp_path):
    d1 = install_dlib_weights(tmp_path)
    links = {n: (d1/n).resolve() for n in DLIB_WEIGHTS}
    assert d1 == tmp_path/".deepface"/"weights" and all(p.exists() and p.stat().st_size > 1_000_000 for p in links.values())
    (d1/DLIB_WEIGHTS[0]).unlink(); (d1/DLIB_WEIGHTS[0]).symlink_to(tmp_path/"gone.dat")  # a dangling link
    d2 = install_dlib_weights(tmp_path)
    assert d2 == d1 and {n: (d2/n).resolve() for n in DLIB_WEIGHTS} == links


@needs_faces
def test_deepface_similarity_and_detection_on_real_photos(dfe):
    import matplotlib
    import matplotlib.pyplot as plt
    import skimage.data as skd
    from diffula.formulation import sample_face
    ast = _photo(skd.astronaut())
    hopper = _photo(plt.imread(f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg"))
    same = {"flipped": ast.flip(-1), "shifted": ast.roll(24, -1), "half size": torch.nn.functional.interpolate(ast, scale_factor=0.5, mode="bilinear", antialias=True),
            "64 px crop": sample_face(64)}
    non_faces = {k: _photo(getattr(skd, k)()) for k in ("coffee", "chelsea", "rocket")}
    r0 = dfe.read(ast, attributes=False)
    assert r0.face.all()
    reads = {k: dfe.read(v, attributes=False) for k, v in {**same, "hopper": hopper, **non_faces}.items()}
    sim = {k: float(r.embedding @ r0.embedding.T) for k, r in reads.items()}
    faces = {k: bool(r.face[0]) for k, r in reads.items()}
    print(sim, faces)
    assert all(faces[k] for k in [*same, "hopper"]) and not any(faces[k] for k in non_faces)
    # DeepFace's own Dlib threshold: cosine distance 0.07, i.e. the same person above a similarity of 0.93
    assert min(sim[k] for k in same) > 0.93 > max(sim[k] for k in ["hopper", *non_faces])


@needs_faces
def test_deepface_detection_rate_on_lfw_faces_vs_non_faces(dfe):
    import skimage.data as skd
    from diffula.formulation import sample_face
    lfw = torch.from_numpy(skd.lfw_subset()).float()[::2, None].expand(-1, 3, -1, -1)  # 50 of the 100 faces, then 50 of the 100 non-faces, 25 px grey
    r = dfe.read(lfw, attributes=False)
    face_rate, nonface_rate = r.face[:50].float().mean().item(), r.face[50:].float().mean().item()
    print(f"LFW subset: faces detected {face_rate:.2f}, non-faces detected {nonface_rate:.2f}")
    assert face_rate > 0.8 and nonface_rate < 0.05
    s = (r.embedding[:50] @ dfe.read(sample_face(64), attributes=False).embedding.T)[:, 0]
    assert s.max() < 0.93  # none of the LFW faces is taken for the astronaut


@needs_faces
def test_deepface_semantics_offline_and_attribute_models_fail_fast(dfe):
    from diffula.formulation import sample_face
    import skimage.data as skd
    batch = torch.cat([sample_face(64), sample_face(64).flip(-1), sample_face(64).roll(3, -1)])  # one person, 3 images
    m = semantic_metrics(sample_face(80), batch, dfe, predict_attributes=False)
    m_noise = semantic_metrics(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)), batch, dfe, predict_attributes=False)
    assert m["face_detected"] and not m_noise["face_detected"] and m["similarity"] > 0.93 > m_noise["similarity"]
    assert m["gender_correct"] is None and m["evaluator"] == "deepface-dlib"
    ref = reference_metrics(batch, dfe, predict_attributes=False)
    assert ref["face_rate"] == 1.0 and ref["similarity"] > 0.93
    with pytest.raises(FileNotFoundError) as e:
        dfe.read(batch[:1])  # gender, race and age need weights DeepFace would download
    msg = str(e.value)
    assert all(p.name in msg for p in dfe.attribute_weights().values()) and str(dfe.weights_dir) in msg
    g = dfe.guess(np.random.default_rng(0))
    assert g["gender"] in dfe.genders and g["race"] in dfe.races


@needs_faces
def test_deepface_attribute_readings_are_parsed(tmp_path, monkeypatch):
    ev = DeepFaceEvaluator(home=tmp_path)
    for p in ev.attribute_weights().values(): p.write_bytes(b"")  # present on disk, so no early failure
    calls = []

    def fake_analyze(img, actions, **kw):  # DeepFace's output layout: one dict per face found
        calls.append((img.shape, actions, kw["detector_backend"]))
        return [{"region": {"x": 0, "y": 0, "w": 10, "h": 10}, "dominant_gender": "Woman", "dominant_race": "asian", "age": 61},
                {"region": {"x": 0, "y": 0, "w": 90, "h": 90}, "dominant_gender": "Man", "dominant_race": "white", "age": 37}]
    monkeypatch.setattr(ev.df, "analyze", fake_analyze)
    from diffula.formulation import sample_face
    r = ev.read(sample_face(64))
    assert (r.gender, r.race, r.age.tolist()) == (["Man"], ["white"], [37.0])  # the largest face
    assert calls[0][0][:2] == (160, 160) and set(calls[0][1]) == {"gender", "race", "age"} and calls[0][2] == "dlib"
    assert ev.truth({"gender": "Man", "race": "white", "age": 30}) == {"gender": "Man", "race": "white", "age": 30.0}
    assert ev.truth({"gender": 1, "race": 2, "age": 30}) is None  # SynthFaces labels are not DeepFace's
