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


# The micro study the orchestration and fault tests sweep: the tiny model cut to 2 blocks.
MICRO = {
    "model": {"preset": "tiny", "overrides": {"depth": 2}},
    "synth": {"train_clips": 32, "val_clips": 16},
    "pretrain": {"epochs": 1, "batch_size": 16},
    "evaluate": {"train_clips": 32, "epochs": 20},
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
}


def write_study(tmp_path: Path, name: str, **sections) -> Path:
    """A study file of MICRO with `sections` replacing whole top-level sections."""
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **MICRO, **sections}))
    return path


def optuna_told(study_path: Path, tune_dir: Path, parameter: str) -> dict:
    """What Optuna was told of each draw (`parameter`'s value -> metric), read from the searcher
    state Tune saved in `tune_dir`, as a resumed run restores it."""
    from ray.tune.search import SearchGenerator

    from harness.study_file import load_study
    from harness.sweep import search_algorithm

    saved = SearchGenerator(search_algorithm(load_study(study_path)))
    saved.restore_from_dir(str(tune_dir))
    return {t.params[parameter]: t.value for t in saved.searcher.searcher._ot_study.trials}


@pytest.fixture(scope="module")
def cluster():
    """Two 1-CPU nodes of a `ray.cluster_utils.Cluster`, the head with its dashboard."""
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1"})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()
