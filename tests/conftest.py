"""Shared pytest set-up: never wait on a model hub; skip tests marked slow unless asked, and cuda tests without a GPU.

Slow tests (`@pytest.mark.slow`: a killed run that resumes, Ray) run with `pytest tests/ --runslow` or
`DIFFULA_RUNSLOW=1 pytest tests/` (the variable also works where this file is not an initial conftest, e.g. `pytest`
from the repository root); `make test-slow` runs only them.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (or set DIFFULA_RUNSLOW=1)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long test, run with --runslow or DIFFULA_RUNSLOW=1 (make test-slow)")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU")


def run_slow(config) -> bool:
    "True when slow tests were asked for: --runslow, or DIFFULA_RUNSLOW set to anything but '', '0'."
    return bool(config.getoption("--runslow", default=False)) or os.environ.get("DIFFULA_RUNSLOW", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if not run_slow(config):
        skip_slow = pytest.mark.skip(reason="slow: run with --runslow or DIFFULA_RUNSLOW=1")
        for item in items:
            if item.get_closest_marker("slow"): item.add_marker(skip_slow)
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if cuda_items:
        import torch  # only when a cuda test was collected: the CLI's torch-free tests need none

        if not torch.cuda.is_available():
            skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
            for item in cuda_items: item.add_marker(skip_cuda)
