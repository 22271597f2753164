"""Every shipped study runs end to end at smoke scale through real Ray, and its report is built
from the rows it wrote."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO
from harness.study_file import load_study

pytestmark = pytest.mark.slow
STUDIES = sorted((REPO / "studies").glob("*.yaml"))


@pytest.fixture(scope="module")
def ray_cluster():
    """One 2-CPU Ray instance with its dashboard, shared by the studies (each joins it)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1"})
    yield cluster
    cluster.shutdown()


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_runs_at_smoke_scale_and_reports(path, ray_cluster, tmp_path):
    study = load_study(path, "smoke")
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--scale", "smoke",
                           "--address", ray_cluster.address], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    trials = pd.read_parquet(tmp_path / "runs" / study.name / "trials.parquet")
    assert len(trials) == study.trial_count() and trials["trial_id"].is_unique
    assert (trials["status"] == "ok").all() and trials["eval_top1"].between(0, 1).all()
    for name in study.sweep.swept_names():
        assert name in trials.columns
    report = subprocess.run([sys.executable, "-m", "harness.cli", "report", f"runs/{study.name}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    summary = json.loads((tmp_path / "reports" / f"{study.name}.json").read_text())
    assert summary["trials"] == str(len(trials)) and summary["scale"] == "smoke"
    # One seed at smoke scale: any finding the rows allow is judged inconclusive, never reproduced.
    assert all(f["verdict"] == "inconclusive (one seed)" for f in summary["findings"])
    check_figure_data(study.name, trials)


def check_figure_data(name, trials):
    """The figures draw the rows' own numbers."""
    from harness.figures import domain_shift_figure, parameter_figure

    if name == "domain_shift":
        heat = domain_shift_figure(trials).data[0]
        for i, source in enumerate(heat.y):
            for j, target in enumerate(heat.x):
                cell = trials[(trials["pretrain.source"].fillna("none (scratch)") == source)
                              & (trials["evaluate.source"] == target)]
                assert heat.z[i][j] == pytest.approx(cell["eval_top1"].mean())
    if name == "data_efficiency":
        figure = parameter_figure(trials, "evaluate.train_clips")
        lines = {t.name: t for t in figure.data if t.mode and "lines" in t.mode}
        for method, rows in trials.groupby("pretrain.method"):
            line = lines[f"method={method}"]
            assert list(line.x) == [24] and line.y[0] == pytest.approx(rows["eval_top1"].iloc[0])
