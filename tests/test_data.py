"""Users and data: CelebA in its official format, folder-per-user data, clear errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from diffula.data import User, celeba_users, check_images, folder_users, make_celeba_fixture


@pytest.fixture
def celeba(tmp_path):
    return make_celeba_fixture(tmp_path / "celeba", {4: 3, 1: 5, 9: 31, 2: 30}, seed=0)


def test_first_users_with_enough_images_in_identity_order(celeba):
    users = celeba_users(celeba, min_images=30, n_users=50, size=64)
    assert [u.user_id for u in users] == ["2", "9"]
    assert [len(u) for u in users] == [30, 31]
    assert users[0].images.shape == (30, 3, 64, 64)
    assert users[0].images.min() >= 0 and users[0].images.max() <= 1


def test_labels_follow_attractive(celeba):
    users = celeba_users(celeba, min_images=5, n_users=None, size=16)
    lines = (celeba / "list_attr_celeba.txt").read_text().splitlines()
    col = lines[1].split().index("Attractive")
    table = {l.split()[0]: int(l.split()[1 + col]) for l in lines[2:]}
    for u in users:
        names = [f.split("/")[-1] for f in u.files]
        assert u.labels.tolist() == [int(table[n] > 0) for n in names]


def test_missing_and_partial_celeba(celeba, tmp_path):
    with pytest.raises(FileNotFoundError, match="identity_CelebA.txt"):
        (celeba / "identity_CelebA.txt").rename(tmp_path / "moved.txt")
        celeba_users(celeba)
    (tmp_path / "moved.txt").rename(celeba / "identity_CelebA.txt")
    victim = sorted((celeba / "img_align_celeba").iterdir())[0]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match="partial"):
        celeba_users(celeba, min_images=1, n_users=None, size=8)


def test_folder_users(tmp_path):
    for name in ("b_user", "a_user"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(tmp_path / name / f"{i}.jpg")
    users = folder_users(tmp_path, size=8, max_images=2)
    assert [u.user_id for u in users] == ["a_user", "b_user"] and len(users[0]) == 2
    with pytest.raises(FileNotFoundError, match="one sub-folder per user"):
        folder_users(tmp_path / "nope")


def test_user_and_image_checks():
    with pytest.raises(ValueError, match="int64"):
        User("x", torch.rand(2, 3, 4, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        check_images(torch.rand(3, 4, 4))
