import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def synth_cache(tmp_path_factory):
    """Every test (and the Ray workers they start) shares one fresh synthetic-data cache."""
    cache = tmp_path_factory.mktemp("synth-cache")
    os.environ["VIDEOMAE_HARNESS_CACHE"] = str(cache)
    return cache
