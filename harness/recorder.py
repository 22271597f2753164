"""Tune's trial events -> progress lines on the console and one Parquet row per trial."""
from __future__ import annotations

import importlib.metadata
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import ray
import ray.tune
from ray.tune import Callback

from .results import EPOCHS_FILE, SCHEMA_VERSION, TRIALS_FILE, code_commit, recorded_trials, upsert_rows
from .study import Experiment, Study, get_path
from .trial import sweep_point

ROW_METRICS = ("pretrain_loss", "pretrain_loss_curve", "pretrain_clips_per_s", "pretrain_time_s", "eval_top1",
               "eval_top5", "eval_protocol", "eval_train_clips", "finetune_loss_curve", "eval_time_s",
               "wall_time_s", "skipped_videos", "workers", "cpu_seconds", "gpu_seconds", "peak_rss_mb",
               "resumed_from_epoch", "reason", "pretrain_run", "pretrain_shared_from", "precision", "machine")


class TrialRecorder(Callback):
    """Prints progress and writes each finished trial's row to trials.parquet at once."""

    def __init__(self, study: Study, run_dir: Path, total: int, recorded: int = 0, table_every_s: float = 60.0):
        self.study, self.run_dir, self.total = study, run_dir, total
        self.finished, self.latest = recorded, {}  # trials done, those of earlier sessions too; trial id -> its last report
        self.resumed: set[tuple[str, str]] = set()  # (trial, stage) said to resume, in this session
        self.started, self.table_every_s, self.last_table = time.monotonic(), table_every_s, time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        print(f"  [{_label(trial.config)}] started", flush=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        """Every `table_every_s`: a table of where each running trial is, and what is left."""
        now = time.monotonic()
        if now - self.last_table < self.table_every_s:
            return
        self.last_table = now
        running = [t for t in trials if t.status == "RUNNING"]
        pending = max(0, self.total - self.finished - len(running))  # Tune lists only the trials it has made
        lines = [f"  -- {(now - self.started) / 60:.1f} min: {self.finished} finished, {len(running)} running, "
                 f"{pending} waiting (of {self.total})"]
        for trial in running:
            phase = trial_phase(self.latest.get(trial.trial_id, {}), self.study.experiment(sweep_point(trial.config)))
            lines.append(f"     {phase:28s} [{_label(trial.config)}]")
        print("\n".join(lines), flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        label, stage = _label(trial.config), result.get("stage")
        self.latest[trial.trial_id] = result
        if stage in ("pretrain", "finetune") and result.get("resumed_from_epoch") and \
                (trial.trial_id, stage) not in self.resumed:
            self.resumed.add((trial.trial_id, stage))
            epoch, what = result["resumed_from_epoch"], "pre-training" if stage == "pretrain" else "fine-tuning"
            print(f"  [{label}] resumed: " + (f"its {what} had finished" if result.get("epoch") == epoch else
                                              f"{what} goes on from its epoch {epoch} checkpoint"), flush=True)
        ran_here = result.get("epoch") != result.get("resumed_from_epoch")  # not the finished run's last, read back
        if stage in ("pretrain", "finetune") and ran_here and shown_epoch(result["epoch"], result["total_epochs"]):
            print(f"  [{label}] {stage} epoch {result['epoch']}/{result['total_epochs']}"
                  f" loss {result['loss']:.4f} ({_rate(result['clips_per_s'])} clips/s)", flush=True)
        elif stage == "done":
            self.finished += 1
            record_trial(self.run_dir, self.study, trial.trial_id, trial.config, result)
            outcome = (f"eval top-1 {result['eval_top1']:.3f}" if result.get("status", "ok") == "ok"
                       else f"{result['status'].upper()}: {result.get('reason')}")
            print(f"  [{label}] done: {outcome} in {result['wall_time_s']:.0f} s "
                  f"({self.finished}/{self.total} done)", flush=True)
            if result.get("skipped_files"):
                print(f"  [{label}] {skipped_text(result['skipped_files'])}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """A trial that ended without its summary was stopped early by the scheduler (ASHA)."""
        last = trial.last_result or {}
        if last.get("stage") == "done":
            return
        self.finished += 1
        result = stopped_result(last)
        record_trial(self.run_dir, self.study, trial.trial_id, trial.config, result)
        print(f"  [{_label(trial.config)}] STOPPED: {result['reason']}", flush=True)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        """A trial failed and Tune runs it once more (FailureConfig), from its last checkpoint."""
        where = Path(trial.error_file) if trial.error_file else None
        print(f"  [{_label(trial.config)}] failed, running it once more: {failure_reason(where)}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """A trial that failed after its retries: a `failed` row with the reason; the rest go on."""
        where = Path(trial.error_file) if trial.error_file else None
        reason = failure_reason(where)
        record_trial(self.run_dir, self.study, trial.trial_id, trial.config, {"status": "failed", "reason": reason})
        print(f"  [{_label(trial.config)}] FAILED: {reason} ({where})", flush=True)


def stopped_result(last: dict[str, Any]) -> dict[str, Any]:
    """The row of a trial stopped early, from its last pre-training report."""
    loss = last.get("loss")
    return {"status": "stopped", "pretrain_loss": loss, "pretrain_loss_curve": last.get("loss_curve", []),
            "pretrain_epochs": last.get("epochs", []), "resumed_from_epoch": last.get("resumed_from_epoch"),
            "reason": f"stopped early by ASHA after pre-training epoch {last.get('epoch')}"
                      + (f" (pretrain_loss {loss:.4g})" if loss is not None else "")}


def skipped_text(files: list, shown: int = 5) -> str:
    """The bad videos a trial skipped ([path, reason] pairs), the first `shown` by name."""
    listed = "; ".join(f"{path} ({reason})" if reason else str(path) for path, reason in files[:shown])
    more = f"; and {len(files) - shown} more" if len(files) > shown else ""
    return f"skipped {len(files)} bad video{'s' if len(files) != 1 else ''} (on_error: skip): {listed}{more}"


def failure_reason(error_file: Path | None) -> str:
    """The exception and its message from a trial's traceback, on one line (a pydantic error's
    message spans lines and ends in a link), or where to look."""
    lines = error_file.read_text().strip().splitlines() if error_file and error_file.exists() else []
    if not lines:
        return "no traceback kept; see the Ray logs"
    starts = [index for index, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    message = [line.strip() for line in lines[starts[-1] if starts else -1:]
               if not line.strip().startswith("For further information visit")]
    return " ".join(message)[:500]


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b")


def _rate(per_s: float) -> str:
    """Clips a second: whole above 10, else two figures (a ViT-B on a CPU reads 0.15, not 0)."""
    return f"{per_s:.0f}" if per_s >= 10 else f"{per_s:.2g}"


def _label(config: dict) -> str:
    values = {**sweep_point(config), "seed": config["seed"]}
    short = [name.rsplit(".", 1)[-1] for name in values]
    names = [s if short.count(s) == 1 else full for s, full in zip(short, values)]  # full path if ambiguous
    return " ".join(f"{n}={shown_value(v)}" for n, v in zip(names, values.values()))


def shown_value(value: Any, width: int = 40) -> str:
    """A swept value as a progress line shows it: a float to 4 digits, a long path by its last
    two parts, a Hugging Face Hub cache snapshot by its model's name (the row keeps the whole)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    if len(text) <= width or "/" not in text:
        return text
    hub = re.search(r"models--([^/]+)--([^/]+)/snapshots/", text)
    return f"{hub[1]}/{hub[2]}" if hub else "…/" + "/".join(Path(text).parts[-2:])


def record_trial(run_dir: Path, study: Study, trial_id: str, config: dict, result: dict) -> None:
    """Write a finished trial's epoch rows, then its trial row (whose presence marks it recorded).
    A trial already recorded is left as it is: each trial lands exactly once."""
    if trial_id in recorded_trials(run_dir):
        return
    identity = {"study": study.name, "trial_id": trial_id, "seed": int(config["seed"]), **swept_columns(study, config)}
    epochs = [{**identity, **epoch} for epoch in result.get("pretrain_epochs") or []]
    if epochs:
        upsert_rows(run_dir / EPOCHS_FILE, epochs)
    upsert_rows(run_dir / TRIALS_FILE, [trial_row(study, trial_id, config, result)])


def trial_row(study: Study, trial_id: str, config: dict, result: dict) -> dict[str, Any]:
    """One Parquet row: identity, every swept parameter by its dotted path, seed, metrics."""
    row = {"study": study.name, "trial_id": trial_id, "status": result.get("status", "ok"), "scale": study.scale,
           "seed": int(config["seed"])}
    row.update(swept_columns(study, config))
    row.update({name: result.get(name) for name in ROW_METRICS})
    row.update(environment())
    return row


def swept_columns(study: Study, config: dict) -> dict[str, Any]:
    """Every swept path's value in this trial, as it ran (a point that does not set a path gets
    the study's value). A trial without pre-training (scratch, pretrained) has its other
    pretrain.* None, but for the weights it starts from."""
    experiment = study.experiment(sweep_point(config))
    settings = experiment.model_dump()
    untrained = not experiment.pretrain.trains
    return {name: None if untrained and name.startswith("pretrain.") and name not in ("pretrain.method", "pretrain.init")
            else get_path(settings, name) for name in study.sweep.swept_names()}


def trial_phase(last: dict[str, Any], experiment: Experiment) -> str:
    """Where a running trial is, from its last report: an epoch, or the silent work after a
    stage's last epoch (the test, or the features a probe needs), which can take minutes."""
    protocol = experiment.evaluate.protocol
    if last.get("stage") == "eval":  # the evaluation's result (a diverged fine-tuning's too): writing the row
        return "finishing"
    if "total_epochs" not in last:
        probe_only = not experiment.pretrain.trains and protocol != "finetune"
        return f"evaluating ({protocol})" if probe_only else "starting"
    stage, epoch, total = last["stage"], last["epoch"], last["total_epochs"]
    if epoch < total:
        return f"{stage} epoch {epoch}/{total}"
    if stage == "finetune":
        return "testing"
    return "fine-tuning: starting" if protocol == "finetune" else f"evaluating ({protocol})"


def shown_epoch(epoch: int, total: int, lines: int = 20) -> bool:
    """Whether the console shows this epoch: all of up to 50, else about `lines` per stage (800
    epochs at paper scale would be 800 lines a trial; the epochs table keeps every one)."""
    return total <= 50 or epoch in (1, total) or epoch % math.ceil(total / lines) == 0


def environment() -> dict[str, Any]:
    return {"git_commit": code_commit(), "torch_version": importlib.metadata.version("torch"),
            "ray_version": ray.__version__, "python_version": sys.version.split()[0],
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "schema_version": SCHEMA_VERSION}


def reconcile(run_dir: Path, study: Study, result: ray.tune.Result) -> None:
    """Record a trial from Tune's final result, unless its row was already written: finished,
    or failed after reporting (a failure that reported nothing was recorded by
    TrialRecorder.on_trial_error, as Tune's result then has no trial id). A result that ends in
    pre-training is not a row: ASHA's stops are recorded as they happen (on_trial_complete), so
    it is a trial an interruption (Ctrl+C) stopped, which the rerun resumes."""
    trial_id, stage = result.metrics.get("trial_id"), result.metrics.get("stage")
    if not trial_id:
        return
    if result.error is not None:
        error_file = Path(result.path) / "error.txt" if result.path else None
        row = {"status": "failed", "reason": failure_reason(error_file)}
    elif stage == "done":
        row = result.metrics
    else:
        return
    record_trial(run_dir, study, trial_id, result.config, row)
