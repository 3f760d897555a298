"""Tests for diffula.deepface_backend: the DeepFace back end on real photos that packages ship, the Dlib weights it links,
and how it reads DeepFace's attribute output (needs the `faces` extra; skipped without it)."""
import importlib.util

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # shared 2-core machine

from diffula.deepface_backend import FACES_EXTRA, DLIB_WEIGHTS, DeepFaceEvaluator, install_dlib_weights
from diffula.evaluation import reference_metrics, semantic_metrics


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
