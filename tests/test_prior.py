"""diffula.prior: what the notebook (nbs/01_ddpm_prior.ipynb) cannot hold — loading with a patched environment
(no hub cache, HF_HUB_OFFLINE, DIFFULA_DATA elsewhere). Eq. 9/13, g_p, denoising, sampling and folder loading are
asserted in the notebook; the ADM converter against guided-diffusion is in test_adm.py."""
import pytest
from diffula.prior import load_prior


def test_load_missing_assets(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"): load_prior(tmp_path/"ffhq.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path/"hf"))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"): load_prior("google/ddpm-ema-celebahq-256")
    monkeypatch.setenv("DIFFULA_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SynthFaces prior"): load_prior("synthfaces")
    with pytest.raises(FileNotFoundError, match="01b_synthprior"): load_prior("synthfaces")
