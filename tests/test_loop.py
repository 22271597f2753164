"""The training loops in-process, without Ray: the same code a Ray Train worker runs."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from harness.evaluate import evaluate
from harness.pretrain import autocast, build_pretrain_model, grad_scaler, optimizer_step, pretrain, pretrain_optimizer
from harness.session import Session, checkpoint_folder
from harness.study import Experiment
from models import make_mask, to_official

TINY = {"synth": {"train_clips": 48, "val_clips": 24},
        "pretrain": {"epochs": 2, "batch_size": 16},
        "evaluate": {"train_clips": 48, "epochs": 30}}


def test_pretrain_reports_each_epoch_and_keeps_a_final_checkpoint_without_optimizer_state(tmp_path):
    experiment = Experiment.model_validate(TINY)
    session = Session(tmp_path)
    pretrain(experiment, seed=0, session=session)
    assert [r["epoch"] for r in session.reports] == [1, 2]
    assert session.reports[-1]["loss_curve"] == [r["loss"] for r in session.reports]

    # A stage's last checkpoint is for evaluation and reconstructions only: AdamW's moments,
    # twice the weights, are left out of it (mid-run ones keep them: the test below resumes).
    final = torch.load(tmp_path / "latest" / "checkpoint.pt", weights_only=True)
    assert "optimizer" not in final and final["epoch"] == 2 and "encoder.norm.weight" in final["model"]
    again = Session(tmp_path)
    pretrain(experiment, seed=0, session=again)  # a finished stage run again reports, trains nothing
    assert again.reports == [{**session.reports[-1], "resumed_from_epoch": 2}]
    longer = Experiment.model_validate({**TINY, "pretrain": {"epochs": 3, "batch_size": 16}})
    with pytest.raises(ValueError, match="finished pre-training of 2 epochs.*cannot be continued to 3"):
        pretrain(longer, seed=0, session=Session(tmp_path))


def test_pretraining_decays_only_the_weight_matrices_as_the_videomae_code_does():
    """AdamW's decoupled decay shrinks a parameter by lr x weight_decay a step, with or without a
    gradient; the VideoMAE code leaves biases, norms and the mask token out of it."""
    experiment = Experiment.model_validate(TINY)
    model = build_pretrain_model(experiment, seed=0)
    optimizer = pretrain_optimizer(model, experiment.pretrain)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    shrink = 1 - experiment.pretrain.lr * experiment.pretrain.weight_decay
    undecayed = set()
    for name, parameter in model.named_parameters():
        decayed = parameter.ndim > 1 and name != "mask_token"
        torch.testing.assert_close(parameter.detach(), before[name] * (shrink if decayed else 1.0), rtol=1e-6, atol=0)
        if not decayed:
            undecayed.add(name)
    assert {"mask_token", "encoder.norm.weight", "decoder.blocks.0.norm1.weight", "encoder.blocks.0.attn.qkv.bias"} <= undecayed


class StoppedAfter(Session):
    """A session whose process is stopped (as by a kill) once `epochs` epochs are checkpointed."""

    def __init__(self, root, epochs):
        super().__init__(root)
        self.epochs = epochs

    def report(self, metrics, checkpoint_dir=None):
        super().report(metrics, checkpoint_dir)
        if len(self.reports) == self.epochs:
            raise KeyboardInterrupt


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_stopped_run_resumes_to_the_run_it_would_have_been(tmp_path, precision):
    """Weights, optimizer state (and fp16's loss scale), schedule and sampling all come back: the
    resumed epochs are the uninterrupted run's, to the bit."""
    pretraining = Experiment.model_validate({**TINY, "precision": precision,
                                             "pretrain": {"epochs": 3, "batch_size": 16}})
    finetuning = Experiment.model_validate({**TINY, "precision": precision,
                                            "evaluate": {**TINY["evaluate"], "protocol": "finetune",
                                                         "finetune": {"epochs": 3, "batch_size": 16}}})
    for name, run in (("pretrain", lambda e, s: pretrain(e, 0, s)), ("finetune", lambda e, s: evaluate(e, 0, s, None))):
        experiment = pretraining if name == "pretrain" else finetuning
        whole = Session(tmp_path / name / "whole")
        run(experiment, whole)
        with pytest.raises(KeyboardInterrupt):
            run(experiment, StoppedAfter(tmp_path / name / "stopped", 2))
        stopped = torch.load(tmp_path / name / "stopped" / "latest" / "checkpoint.pt", weights_only=True)
        assert ("scaler" in stopped) == (precision == "fp16"), name
        if precision == "fp16":
            assert stopped["scaler"]["scale"] == 2.0**16, name  # GradScaler's first scale: no overflow here
        resumed = Session(tmp_path / name / "stopped")
        run(experiment, resumed)
        curve = "loss_curve" if name == "pretrain" else "finetune_loss_curve"
        assert len(whole.reports[-1][curve]) == 3 and resumed.reports[-1][curve] == whole.reports[-1][curve], name
        assert len(resumed.reports) == (1 if name == "pretrain" else 2)  # epoch 3 (and the test) ran again
        if name == "finetune":  # the epochs run before the stop, and their times, count in the trial's
            assert whole.reports[-1]["resumed_from_epoch"] is None and resumed.reports[-1]["resumed_from_epoch"] == 2
            epochs = resumed.reports[-1]["finetune_epochs"]
            assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(e["epoch_time_s"] > 0 for e in epochs)


class Checkpoints(Session):
    """A session that notes which reports carry a checkpoint."""

    def __init__(self, root, interval_s):
        super().__init__(root)
        self.checkpoint_interval_s, self.kept = interval_s, []

    def report(self, metrics, checkpoint_dir=None):
        if checkpoint_dir:
            self.kept.append(metrics.get("epoch", "result"))  # the evaluation's result has no epoch
        super().report(metrics, checkpoint_dir)


def test_a_checkpoint_interval_keeps_the_last_epoch_and_those_it_is_due(tmp_path):
    """resources.checkpoint_interval_s: 0 keeps every epoch; an hour keeps only each stage's last
    (fine-tuning's before its test), and a run stopped before any resumes from the start."""
    experiment = Experiment.model_validate({**TINY, "pretrain": {"epochs": 3, "batch_size": 16},
                                            "evaluate": {**TINY["evaluate"], "protocol": "finetune",
                                                         "finetune": {"epochs": 3, "batch_size": 16}}})
    for interval_s, kept in ((0.0, [1, 2, 3]), (3600.0, [3])):
        pretraining = Checkpoints(tmp_path / f"pretrain-{interval_s}", interval_s)
        pretrain(experiment, 0, pretraining)
        finetuning = Checkpoints(tmp_path / f"finetune-{interval_s}", interval_s)
        evaluate(experiment, 0, finetuning, tmp_path / f"pretrain-{interval_s}" / "latest")
        assert pretraining.kept == kept and finetuning.kept == [*kept, "result"], interval_s

    stopped = StoppedAfter(tmp_path / "stopped", 2)
    stopped.checkpoint_interval_s = 3600.0
    with pytest.raises(KeyboardInterrupt):
        pretrain(experiment, 0, stopped)
    resumed = Checkpoints(tmp_path / "stopped", 3600.0)
    pretrain(experiment, 0, resumed)
    assert resumed.reports[-1]["resumed_from_epoch"] == 0 and [r["epoch"] for r in resumed.reports] == [1, 2, 3]


def test_evaluate_pretrained_and_scratch_encoders(tmp_path):
    experiment = Experiment.model_validate(TINY)
    session = Session(tmp_path)
    pretrain(experiment, seed=0, session=session)
    with session.latest_checkpoint() as checkpoint:
        trained = evaluate(experiment, 0, Session(), checkpoint)
    scratch = evaluate(experiment, 0, Session(), None)
    for metrics in (trained, scratch):
        assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
        assert metrics["train_clips"] == 48 and metrics["val_clips"] == 24 and metrics["num_classes"] == 8
    assert trained["top1"] != scratch["top1"] or trained["top5"] != scratch["top5"]


def test_pretrain_with_running_cell_and_dual_masking(tmp_path):
    experiment = Experiment.model_validate({**TINY, "pretrain": {
        "epochs": 1, "batch_size": 16, "mask": {"strategy": "running_cell", "ratio": 0.75},
        "decoder_mask": {"ratio": 0.5}}})
    session = Session(tmp_path)
    pretrain(experiment, seed=0, session=session)
    assert session.reports[0]["loss"] > 0


def test_knn_and_finetune_protocols_pretrained_and_scratch(tmp_path):
    experiment = Experiment.model_validate(TINY)
    session = Session(tmp_path / "pretrain")
    pretrain(experiment, seed=0, session=session)
    for protocol in ("knn", "finetune"):
        spec = Experiment.model_validate({**TINY, "evaluate": {
            **TINY["evaluate"], "protocol": protocol, "knn_k": 5,
            "finetune": {"epochs": 2, "batch_size": 16, "warmup_epochs": 1}}})
        with session.latest_checkpoint() as latest:
            for checkpoint in (latest, None):
                metrics = evaluate(spec, 0, Session(), checkpoint)
                assert metrics["protocol"] == protocol and metrics["val_clips"] == 24
                assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
    assert len(metrics["finetune_loss_curve"]) == 2


def test_finetune_reports_each_epoch_and_resumes(tmp_path):
    recipe = {"epochs": 2, "batch_size": 16, "warmup_epochs": 1}
    experiment = Experiment.model_validate({**TINY, "evaluate": {**TINY["evaluate"], "protocol": "finetune",
                                                                  "finetune": recipe}})
    session = Session(tmp_path)
    first = evaluate(experiment, 0, session, None)
    assert [r["stage"] for r in session.reports] == ["finetune", "finetune", "eval"]
    again = Session(tmp_path)  # a finished evaluation hands back its result without training
    assert evaluate(experiment, 0, again, None)["top1"] == first["top1"]
    assert [r["stage"] for r in again.reports] == ["eval"]


def test_knn_votes_for_the_nearest_class():
    import torch
    from harness.evaluate import knn_scores

    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = torch.tensor([0, 0, 1, 1])
    scores = knn_scores(train_x, train_y, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), num_classes=2, k=2)
    assert scores.argmax(1).tolist() == [0, 1]


def test_a_diverging_run_stops_and_says_so(tmp_path):
    experiment = Experiment.model_validate({**TINY, "pretrain": {"epochs": 3, "batch_size": 16, "lr": 1e12,
                                                                 "warmup_epochs": 0, "clip_grad": None}})
    session = Session(tmp_path)
    pretrain(experiment, seed=0, session=session)
    last = session.reports[-1]
    assert last["diverged"] and last["bad_steps"] == 1 and len(session.reports) < 3
    again = Session(tmp_path)  # a rerun hands back the diverged result instead of training on
    pretrain(experiment, seed=0, session=again)
    assert [r["diverged"] for r in again.reports] == [True]


def test_fp16_skips_overflowing_steps_while_its_loss_scale_comes_down_and_stops_on_a_nan_loss():
    """fp16 (autocast and loss scaling, as the paper trained on V100s): a loss scaled past fp16's
    range overflows the gradients; that step is skipped and the scale halved, which is the
    scaler's search for a scale and not a bad step; a NaN loss is one."""
    experiment = Experiment.model_validate({**TINY, "precision": "fp16"})
    model = build_pretrain_model(experiment, seed=0)
    optimizer = pretrain_optimizer(model, experiment.pretrain)
    scaler = grad_scaler("fp16", torch.device("cpu"))
    scaler.load_state_dict({**scaler.state_dict(), "scale": 2.0**40})  # far past fp16's 65504: they overflow
    grid, video = model.config.grid, torch.randn(2, 3, 16, 32, 32)
    mask = make_mask("tube", 2, grid, 0.9, torch.Generator().manual_seed(0))
    outcomes, weights = [], model.encoder.norm.weight.detach().clone()
    while not outcomes or outcomes[-1] == "overflow":
        with autocast("fp16", torch.device("cpu")):
            loss = model(video, mask).loss
        outcomes.append(optimizer_step(loss, model, optimizer, scaler, clip_grad=None))
        if outcomes[-1] == "overflow":
            assert torch.equal(model.encoder.norm.weight, weights)  # the step was skipped
    assert len(outcomes) > 10 and outcomes[-1] == "taken" and scaler.get_scale() == 2.0 ** (41 - len(outcomes))
    assert not torch.equal(model.encoder.norm.weight, weights)
    nan_loss = model(video, mask).loss * float("nan")
    assert optimizer_step(nan_loss, model, optimizer, scaler, clip_grad=None) == "bad"
    assert optimizer_step(model(video, mask).loss, model, optimizer, scaler, clip_grad=None) == "taken"


def test_a_diverging_finetune_stops_and_says_so(tmp_path):
    """NaN weights scored as a guess (top-1 near chance, loss curve [nan, nan]) and the trial was
    recorded as ok; now fine-tuning stops at the first non-finite gradient and reports diverged."""
    recipe = {"epochs": 3, "batch_size": 16, "warmup_epochs": 0, "lr": 1e12}
    experiment = Experiment.model_validate({**TINY, "evaluate": {**TINY["evaluate"], "protocol": "finetune",
                                                                  "finetune": recipe}})
    session = Session(tmp_path)
    metrics = evaluate(experiment, 0, session, None)
    assert metrics["diverged"] and metrics["epoch"] == 1 and "top1" not in metrics
    assert [r["stage"] for r in session.reports] == ["eval"]
    again = Session(tmp_path)  # a rerun hands back the diverged result instead of training on
    assert evaluate(experiment, 0, again, None)["diverged"] and len(again.reports) == 1


def test_a_linear_probe_whose_scores_are_not_finite_is_recorded_as_diverged(tmp_path):
    """NaN scores were scored by their arg-max, the first class: top-1 the first class's share,
    recorded as ok. One labelled clip gave NaN (no spread to standardize by); a huge rate still does."""
    experiment = Experiment.model_validate({**TINY, "pretrain": {**TINY["pretrain"], "method": "scratch"},
                                            "evaluate": {**TINY["evaluate"], "protocol": "linear", "lr": 1e30}})
    metrics = evaluate(experiment, 0, Session(tmp_path / "huge"), None)
    assert metrics["diverged"] and "top1" not in metrics and "not finite" in metrics["reason"]
    one = experiment.model_copy(update={"evaluate": experiment.evaluate.model_copy(update={"lr": 1e-2, "train_clips": 1})})
    metrics = evaluate(one, 0, Session(tmp_path / "one"), None)
    assert not metrics.get("diverged") and metrics["train_clips"] == 1 and 0 <= metrics["top1"] <= 1


def test_freed_tensor_memory_is_kept_and_reused_without_faulting_its_pages_in_again():
    """keep_freed_memory (which the loops call): a step's large tensors, freed at its end, stay in
    the heap and the next step reuses their pages. (glibc's default returns them to the system
    whenever its dynamic thresholds say so, which depends on the process's history: in a loop like
    this one, every page faulted in again in 4 of 6 fresh processes, none in 2.)"""
    code = """
import resource, torch
from harness.session import keep_freed_memory

def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [torch.ones(2 << 20) for _ in range(16)]  # 8 MiB each, written whole: 32,768 pages
    del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

assert keep_freed_memory()
first = step()
settled = [step() for _ in range(3)]  # the heap's free chunks settle into reusable runs
print(first, max(step() for _ in range(5)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    first, after = map(int, done.stdout.split())
    assert first > 32768 * 0.9  # the first step's pages are new
    assert after < 32768 / 100  # later steps reuse them


def test_a_checkpoint_folder_left_by_a_killed_process_is_removed_by_the_next(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # The child writes a checkpoint into its folder, says where, and is killed inside the block.
    child = subprocess.Popen([sys.executable, "-c", (
        "import time; from harness.session import checkpoint_folder\n"
        "with checkpoint_folder() as folder:\n"
        "    (folder / 'checkpoint.pt').write_bytes(bytes(1000))\n"
        "    print(folder, flush=True)\n"
        "    time.sleep(60)\n")], stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    left = Path(child.stdout.readline().strip())
    child.kill()
    child.wait()
    assert left.is_relative_to(tmp_path) and (left / "checkpoint.pt").exists()
    with checkpoint_folder() as mine:
        assert mine.is_relative_to(tmp_path) and not list(mine.iterdir())
        assert not left.parent.exists()  # the killed process's folder, checkpoint and all
    assert not mine.exists()


def test_pretrain_init_starts_from_given_weights_in_the_official_layout_or_this_harness(tmp_path):
    """pretrain.init: a checkpoint of this harness, or one in the official VideoMAE code's layout
    (q/v biases, the `args` it saves), is what `pretrained` evaluates and what `videomae` pre-trains
    further from; one of another model, or no checkpoint at all, is refused naming the weight."""
    import argparse

    from harness.evaluate import load_encoder
    from harness.weights import load_init

    pretrain(Experiment.model_validate(TINY), seed=0, session=Session(tmp_path / "given"))
    ours = tmp_path / "given" / "latest" / "checkpoint.pt"
    weights = torch.load(ours, weights_only=True)["model"]
    official = to_official(weights)
    torch.save({"model": official, "epoch": 799, "args": argparse.Namespace(model="pretrain_videomae_tiny")},
               tmp_path / "official.pth")
    for init in (ours, tmp_path / "official.pth"):
        experiment = Experiment.model_validate({**TINY, "pretrain": {"method": "pretrained", "init": str(init)}})
        encoder = load_encoder(experiment, seed=1, checkpoint=None)  # another seed: the weights are init's
        for name, value in encoder.state_dict().items():
            expected = weights[f"encoder.{name}"].clone()
            if name.endswith("qkv.bias") and init != ours:  # a k bias changes no output; the official code has none
                expected[len(expected) // 3: 2 * len(expected) // 3] = 0
            torch.testing.assert_close(value, expected, rtol=0, atol=0)
    # Pre-training further starts from them (at an lr of 1e-12 they are where it ends, too)
    further = Experiment.model_validate({**TINY, "pretrain": {"epochs": 1, "batch_size": 16, "lr": 1e-12, "min_lr": 0, "warmup_epochs": 0,
                                                              "weight_decay": 0, "init": str(tmp_path / "official.pth")}})
    pretrain(further, seed=1, session=Session(tmp_path / "further"))
    ended = torch.load(tmp_path / "further" / "latest" / "checkpoint.pt", weights_only=True)["model"]
    for name, value in weights.items():
        third = len(value) // 3
        for part in [slice(0, third), slice(2 * third, None)] if name.endswith("qkv.bias") else [slice(None)]:
            torch.testing.assert_close(ended[name][part], value[part], rtol=0, atol=1e-6)
    # An encoder alone loads (the decoder keeps its initialisation); another model does not
    torch.save({"model": {k: v for k, v in official.items() if k.startswith("encoder.")}}, tmp_path / "encoder.pth")
    load_init(build_pretrain_model(Experiment.model_validate(TINY), seed=0), str(tmp_path / "encoder.pth"))
    deeper = Experiment.model_validate({**TINY, "model": {"preset": "tiny", "overrides": {"depth": 5}}})
    with pytest.raises(ValueError, match=r"official.pth: has no encoder.blocks.4.norm1.weight; the checkpoint has an encoder "
                                         r"192 wide, 4 blocks deep, on 2x8x8 cubes \(tiny\) and a decoder 96 wide, 2 blocks "
                                         r"deep, the study's model an encoder 192 wide, 5 blocks deep"):
        load_init(build_pretrain_model(deeper, seed=0), str(tmp_path / "official.pth"))
    wider = Experiment.model_validate({**TINY, "model": {"preset": "small"}})
    with pytest.raises(ValueError, match=r"official.pth: encoder.patch_embed.proj.weight is \[192, 3, 2, 8, 8\] there, "
                                         r"\[384, 3, 2, 16, 16\] in the study's model"):
        load_init(build_pretrain_model(wider, seed=0), str(tmp_path / "official.pth"))
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(ValueError, match=r"notes.pth: not a checkpoint this harness reads"):
        load_init(build_pretrain_model(Experiment.model_validate(TINY), seed=0), str(tmp_path / "notes.pth"))
