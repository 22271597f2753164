"""Result rows (trials.parquet) -> reports/<study>.html (self-contained plotly), <study>.md
(tables for a code host), a copy of the rows under reports/<study>/, and reports/index.html.

Data flows one way: this module reads a run folder (or a copied one) and writes reports."""
from __future__ import annotations

import base64
import html
import json
import math
import shutil
from pathlib import Path

import pandas as pd

from .figures import figures, hashable, parameters, summarize
from .findings import METRIC, findings
from .results import (EPOCHS_FILE, STUDY_FILE, TRIALS_FILE, StorageError, added_seeds, final_rows, read_json,
                      read_trials, settings_changed, write_atomically)
from .study import Study
from .study_file import effective_settings

BLANK = "–"  # a cell with no value: a setting a trial did not have (scratch), a spread of one seed
NONE_FINISHED = "No trial has finished."
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 1em}table{border-collapse:collapse;"
         "margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}.reproduced{color:#1a7f37}"
         ".reversed{color:#cf222e}.inconclusive{color:#9a6700}")


def summary_table(trials: pd.DataFrame, metric: str = METRIC, mode: str = "max") -> pd.DataFrame:
    """One row per configuration: the metric's mean, interval and seeds, mean loss and wall time;
    best first by the study's `metric` and `mode` (what its sweep optimizes)."""
    by = parameters(trials) or ["study"]
    beside = [column for column in ("pretrain_loss", "wall_time_s") if column != metric]  # the metric is "mean"
    extra = trials[trials["status"] == "ok"].groupby(by, dropna=False)[beside].mean()
    table = summarize(trials, by, metric).merge(extra.reset_index(), on=by, how="left")
    return table.sort_values("mean", ascending=mode == "min")


def ranking(study: Study | None) -> tuple[str, str]:
    """The metric and mode (max | min) that rank a run's trials: its study's `sweep.metric` and
    `sweep.mode` (eval_top1, max without a study.json)."""
    return (study.sweep.metric, study.sweep.mode) if study else (METRIC, "max")


def best_row(rows: pd.DataFrame, metric: str, mode: str) -> pd.Series:
    """The row of the best `metric` (a tie: the first recorded)."""
    return rows.sort_values(metric, ascending=mode == "min", kind="stable").iloc[0]


def cost_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: mean wall time per trial, pre-training clips/s, and CPU/GPU-hours in all."""
    by = parameters(trials) or ["study"]
    ok = trials[trials["status"] == "ok"]
    table = ok.groupby(by, dropna=False).agg(
        trials=("trial_id", "count"), min_per_trial=("wall_time_s", lambda s: s.mean() / 60),
        pretrain_clips_per_s=("pretrain_clips_per_s", "mean"),
        # what the trials held (reserved CPUs and GPUs x wall time), in all: what a cluster bills
        cpu_hours_held=("cpu_seconds", lambda s: s.sum() / 3600), gpu_hours_held=("gpu_seconds", lambda s: s.sum() / 3600))
    return table.reset_index()


def header(trials: pd.DataFrame, description: str = "", planned: int | None = None) -> dict[str, str]:
    """The facts a reader needs first: what ran, where, on which commit, and how long it took."""
    first = trials.iloc[0]
    facts = {"study": str(first["study"]), "description": description,
             "scale": ", ".join(sorted(trials["scale"].astype(str).unique())),
             "trials": _trial_count(trials, planned), "bad videos": _bad_videos(trials),
             "seeds": str(trials["seed"].nunique()),
             "evaluation": _distinct(trials, "eval_protocol"), "precision": _distinct(trials, "precision"),
             "machine": _distinct(trials, "machine"),
             "commit": _distinct(trials, "git_commit"),
             "time it took": _time_taken(trials)}
    return {k: v for k, v in facts.items() if v}


def _with_setup(facts: dict[str, str], study: Study) -> dict[str, str]:
    """`facts` with how the trials were scored and what each held, after the protocol names."""
    points = study.sweep.grid_points() if study.sweep.method == "grid" else [{}]
    scored = []
    for spec in (study.experiment(point).evaluate for point in points):
        how = {"knn": f"knn (k {spec.knn_k})", "linear": f"linear probe ({spec.epochs} steps)",
               "finetune": f"fine-tuning ({spec.finetune.epochs} epochs)"}[spec.protocol]
        views = spec.test_clips * spec.test_crops
        scored.append(f"{how} on {spec.source}, {spec.train_clips or 'all'} labelled clips, "
                      f"{views} view{'s' if views > 1 else ''} a video ({spec.sampling})")
    res = study.resources
    gpus = f" and {res.gpus_per_worker:g} GPU" if res.gpus_per_worker else ""
    held = (f"{res.workers_per_trial} worker(s) a trial, each {res.cpus_per_worker:g} CPU{gpus}"
            f"{f' and {res.loader_processes()} loader processes' if res.loader_processes() else ''}")
    setup = {"evaluation": " | ".join(dict.fromkeys(scored)), "resources": held}
    ordered = {}
    for key, value in facts.items():
        ordered[key] = setup.pop(key, value)
        if key == "evaluation":
            ordered.update(setup)
    return {**ordered, **setup}


def _time_taken(trials: pd.DataFrame) -> str:
    """The wall-clock time in which trials ran, and the trials' time added up; empty when no
    trial ran to its end (a failed trial records no wall time). A study resumed or given more
    seeds later does not count the time between its runs."""
    finished = pd.to_datetime(trials["finished_at"])
    started = finished - pd.to_timedelta(trials["wall_time_s"], unit="s")
    spans = sorted((start, end) for start, end in zip(started, finished) if not pd.isna(start))
    if not spans:
        return ""
    running, covered_to = pd.Timedelta(0), spans[0][0]
    for start, end in spans:  # the union of the trials' spans
        running += max(end - max(start, covered_to), pd.Timedelta(0))
        covered_to = max(covered_to, end)
    return (f"{running.total_seconds() / 60:.1f} min wall clock "
            f"({trials['wall_time_s'].sum() / 60:.1f} min of trial time)")


def _trial_count(trials: pd.DataFrame, planned: int | None = None) -> str:
    """"12", "12 of 15" while a run is short of the trials its study makes, and
    "12 (10 ok, 1 diverged, 1 failed)" when some did not finish."""
    counts = trials["status"].value_counts()
    recorded = f"{len(trials)} of {planned}" if planned and planned > len(trials) else str(len(trials))
    if set(counts.index) == {"ok"}:
        return recorded
    return f"{recorded} ({', '.join(f'{n} {status}' for status, n in counts.items())})"


def _bad_videos(trials: pd.DataFrame) -> str:
    """How many trials skipped bad videos (on_error: skip); empty when none did."""
    counts = trials["skipped_videos"].fillna(0) if "skipped_videos" in trials else pd.Series(dtype=float)
    hit = int((counts > 0).sum())
    if not hit:
        return ""
    return (f"{hit} of {len(trials)} trials skipped bad videos (up to {int(counts.max())} a trial, "
            "`skipped_videos`); `harness data check SOURCE` names them")


def unfinished_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that diverged, stopped or failed, with parameters and reason (empty if all finished)."""
    columns = ["status", *parameters(trials), "seed", "reason", "trial_id"]
    bad = trials[trials["status"] != "ok"]
    return bad[[c for c in columns if c in bad]].sort_values("status")


def _distinct(trials: pd.DataFrame, column: str) -> str:
    return ", ".join(sorted(trials[column].dropna().astype(str).unique())) if column in trials else ""


def _verdict_class(verdict: str) -> str:
    return "reversed" if "reversed" in verdict else verdict.split()[0]


def difference_text(difference: float, low: float, high: float) -> str:
    """'+0.050 [+0.012, +0.087]'; with one seed there is no interval to give."""
    if math.isnan(low) or math.isnan(high):
        return f"{difference:+.3f} [{BLANK}]"
    return f"{difference:+.3f} [{low:+.3f}, {high:+.3f}]"


def findings_html(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p>No paper finding can be judged from what this study swept.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(r.finding)}</td><td>{html.escape(r.comparison)}</td><td>{html.escape(r.context)}</td>"
        f"<td>{r.better_mean:.3f} vs {r.worse_mean:.3f}</td><td>{difference_text(r.difference, r.ci_low, r.ci_high)}</td>"
        f"<td>{r.seeds}{' paired' if r.paired else ''}</td><td class='{_verdict_class(r.verdict)}'><b>{html.escape(r.verdict)}</b></td>"
        f"<td>{html.escape(r.paper)}</td></tr>" for r in table.itertuples())
    return ("<table><tr><th>paper finding</th><th>comparison</th><th>where</th><th>ours (mean)</th>"
            "<th>difference [95% interval]</th><th>seeds</th><th>verdict</th><th>paper (ViT-B, paper scale)</th></tr>"
            f"{rows}</table>")


def findings_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "No paper finding can be judged from what this study swept.\n"
    view = pd.DataFrame({"paper finding": table["finding"], "comparison": table["comparison"], "where": table["context"],
                         "ours": [f"{a:.3f} vs {b:.3f}" for a, b in zip(table["better_mean"], table["worse_mean"])],
                         "difference [95% interval]": [difference_text(d, lo, hi) for d, lo, hi in
                                                       zip(table["difference"], table["ci_low"], table["ci_high"])],
                         "seeds": table["seeds"], "verdict": [f"**{v}**" for v in table["verdict"]],
                         "paper": table["paper"]})
    return markdown_table(view)


def html_table(table: pd.DataFrame) -> str:
    if table.empty:
        return f"<p>{NONE_FINISHED}</p>"
    return table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep=BLANK)


def markdown_table(table: pd.DataFrame) -> str:
    if table.empty:
        return f"{NONE_FINISHED}\n"
    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return BLANK
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _description(run_dir: Path) -> str:
    path = run_dir / STUDY_FILE
    return read_json(path).get("description", "") if path.exists() else ""


def saved_study(run_dir: Path) -> Study | None:
    """The study the run folder was made from (None without a readable study.json: rows copied
    on their own, or written by an older version)."""
    try:
        return Study.model_validate_json((run_dir / STUDY_FILE).read_text())
    except (OSError, ValueError):
        return None


def planned_trials(run_dir: Path) -> int | None:
    """How many trials the run folder's study makes (None when its study is not known)."""
    study = saved_study(run_dir)
    return study.trial_count() if study else None


def _gallery(run_dir: Path, trials: pd.DataFrame, out: Path, metric: str, mode: str) -> Path | None:
    """The best pre-trained trial's reconstructions, made from its checkpoint while the run
    folder has it. A report rebuilt from copied rows keeps the gallery made with them: the one
    already at `out`, or the one beside the rows' folder (a report's own `<run>_gallery.png`)."""
    from .gallery import gallery_png  # torch and the model: not for `harness status` and `ls`

    ok = trials[(trials["status"] == "ok") & trials["pretrain_loss"].notna() & trials[metric].notna()]
    if not ok.empty:
        made = gallery_png(run_dir, best_row(ok, metric, mode), out)
        if made:
            return made
    beside_rows = run_dir.parent / out.name
    if not out.exists() and beside_rows.is_file():
        shutil.copyfile(beside_rows, out)
    return out if out.exists() else None


def replaced_run(run_dir: Path, out_dir: Path) -> str | None:
    """Why writing run_dir's report into out_dir would replace the report, and the copy of the
    rows, of another run: the copy there was made with other settings (a smoke run over a shipped
    study's report) or holds finished trials this run lacks. None when it would not; a run that
    adds seeds to the copy's grid study (as `harness run` does) extends its report."""
    run_dir, target = Path(run_dir), Path(out_dir) / Path(run_dir).resolve().name
    if target.resolve() == run_dir.resolve() or not all((d / TRIALS_FILE).is_file() for d in (run_dir, target)):
        return None
    if (run_dir / STUDY_FILE).is_file():
        settings = read_json(run_dir / STUDY_FILE)
        changed = settings_changed(target, settings)  # [] when the copy has no study.json
        if changed and not added_seeds(target, settings):
            more = ", ..." if len(changed) > 3 else ""
            return f"{target} is the report of another run of the study ({', '.join(changed[:3])}{more})"
    held, finished = len(final_rows(target)), len(final_rows(run_dir))
    if held > finished:
        return f"{target} holds {held} finished trials, this run {finished}"
    return None


def write_report(run_dir: Path, out_dir: Path) -> Path:
    """Write <out_dir>/<run>.html, .md, .json (for the index) and a copy of the rows under
    <out_dir>/<run>/, <run> being the run folder's name (the study's, or e.g. the
    <study>.<date>-<time> of a run set aside by --restart); then refresh the index. Returns the
    html path."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    rows = read_trials(run_dir)
    trials = hashable(rows)
    facts = header(trials, _description(run_dir), planned_trials(run_dir))
    name = run_dir.resolve().name
    if name != facts["study"]:
        facts["run folder"] = name
    study = saved_study(run_dir)
    if study:
        facts = _with_setup(facts, study)
    metric, mode = ranking(study)
    compared = hashable(effective_settings(rows, study)) if study else trials  # settings as the trials ran them
    found, table, cost = findings(compared, parameters(trials)), summary_table(trials, metric, mode), cost_table(trials)
    unfinished = unfinished_table(trials)
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy_rows(run_dir, out_dir / name)
    gallery = _gallery(run_dir, rows, out_dir / f"{name}_gallery.png", metric, mode)  # the values as the trial ran them
    ranked = f"{metric}, mean over seeds, 95% interval" + (", lowest first" if mode == "min" else "")

    charts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{i}")
              for i, fig in enumerate(figures(trials, bool(study and study.sweep.method == "optuna"), metric, mode))]
    facts_html = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in facts.items())
    gallery_html = ""
    if gallery:
        encoded = base64.b64encode(gallery.read_bytes()).decode()
        gallery_html = ("<h2>Reconstructions</h2><p>Best pre-trained trial; rows: original, masked input, "
                        f"reconstruction, for two validation clips.</p><img alt='reconstructions' src='data:image/png;base64,{encoded}'>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title>"
            f"<style>{STYLE}</style></head><body><p><a href='index.html'>all studies</a></p>"
            f"<h1>Study: {html.escape(name)}</h1><ul>{facts_html}</ul>"
            f"<h2>Findings</h2>{findings_html(found)}"
            "<p>Verdicts come from the rows: <i>reproduced</i> when the 95% interval of the difference lies above "
            "zero, <i>not reproduced (reversed)</i> when it lies below, <i>inconclusive</i> otherwise. The paper's "
            "numbers are ViT-B at paper scale: compare the direction, not the size.</p>"
            f"<h2>Figures</h2>{''.join(charts)}"
            f"<h2>Configurations ({ranked})</h2>"
            f"{html_table(table)}<h2>Cost</h2>{html_table(cost)}"
            + (f"<h2>Trials that did not finish</h2>{unfinished.to_html(index=False, na_rep=BLANK)}" if len(unfinished) else "")
            + f"{gallery_html}"
            "</body></html>")
    html_path = out_dir / f"{name}.html"
    write_atomically(html_path, page)  # whole or not at all: a report stopped midway leaves the last one
    facts_md = "\n".join(f"- **{k}**: {v}" for k, v in facts.items())
    write_atomically(html_path.with_suffix(".md"),
        f"# Study: {name}\n\n{facts_md}\n\n## Findings\n\n{findings_markdown(found)}\n"
        f"## Configurations ({ranked})\n\n{markdown_table(table)}\n"
        f"## Cost\n\n{markdown_table(cost)}"
        + (f"\n## Trials that did not finish\n\n{markdown_table(unfinished)}" if len(unfinished) else "")
        + (f"\n## Reconstructions\n\n![reconstructions]({gallery.name})\n" if gallery else ""))
    write_atomically(html_path.with_suffix(".json"), json.dumps(
        {**facts, "findings": found[["finding", "context", "difference", "verdict"]].to_dict("records") if not found.empty else []}))
    write_index(out_dir)
    return html_path


def _copy_rows(run_dir: Path, target: Path) -> None:
    if run_dir.resolve() == target.resolve():
        return
    target.mkdir(parents=True, exist_ok=True)
    for file in (TRIALS_FILE, EPOCHS_FILE, STUDY_FILE):
        if (run_dir / file).exists():
            shutil.copyfile(run_dir / file, target / file)


def write_index(out_dir: Path) -> Path:
    """reports/index.html: every report in the folder, with its findings' verdicts."""
    items = []
    for summary in sorted(out_dir.glob("*.json")):
        facts = json.loads(summary.read_text())
        verdicts = "".join(f"<li>{html.escape(f['finding'])} ({html.escape(f['context'])}): "
                           f"<span class='{_verdict_class(f['verdict'])}'>{html.escape(f['verdict'])}</span> "
                           f"({f['difference']:+.3f})</li>" for f in facts.get("findings", []))
        items.append(f"<h2><a href='{html.escape(summary.stem)}.html'>{html.escape(summary.stem)}</a></h2>"
                     f"<p>{html.escape(facts.get('description', ''))}<br>{html.escape(facts.get('scale', ''))} scale, "
                     f"{html.escape(facts.get('trials', '?'))} trials, {html.escape(facts.get('time it took', ''))}</p>"
                     f"<ul>{verdicts}</ul>")
    index = out_dir / "index.html"
    write_atomically(index, f"<!doctype html><html><head><meta charset='utf-8'><title>Studies</title><style>{STYLE}</style>"
                     f"</head><body><h1>VideoMAE harness: studies</h1>{''.join(items)}</body></html>")
    return index


def status_table(run_dir: Path) -> str:
    """`harness status`: how many trials finished, and each configuration, best first."""
    study = saved_study(run_dir)
    planned = study.trial_count() if study else None
    if study and not (run_dir / TRIALS_FILE).exists():  # running: nothing recorded yet
        return f"{study.name} ({study.scale} scale): 0 of {planned} trials recorded\nno trial has finished yet"
    trials = hashable(read_trials(run_dir))
    facts = header(trials, planned=planned)
    took = f", {facts['time it took']}" if "time it took" in facts else ""
    line = f"{facts['study']} ({facts['scale']} scale): trials recorded {facts['trials']}{took}"
    if "bad videos" in facts:
        line += f"\n{facts['bad videos']}"
    metric, mode = ranking(study)
    table = summary_table(trials, metric, mode).rename(columns={"mean": metric})  # std, n, ci95: of it
    if table.empty:
        return f"{line}\nno trial has finished yet"
    return f"{line}\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep=BLANK)


def runs_table(runs_root: Path) -> str:
    """`harness ls`: every study under a runs folder with its trial count and best metric, also
    a study that has started and recorded no trial yet."""
    if not runs_root.is_dir():
        raise FileNotFoundError(f"{runs_root}: no such runs folder")
    run_dirs = sorted(p for p in runs_root.glob("*") if (p / TRIALS_FILE).exists() or (p / STUDY_FILE).exists())
    lines, width = [], max([24] + [len(run_dir.name) for run_dir in run_dirs])  # --restart's names are longer
    for run_dir in run_dirs:
        study = saved_study(run_dir)
        planned = study.trial_count() if study else None
        if not (run_dir / TRIALS_FILE).exists():
            count, scale = f"0/{planned}" if planned else "0", study.scale if study else "?"
            lines.append(f"{run_dir.name:{width}s} {scale:6s} {count:>7s} trials  no trial has finished yet")
            continue
        try:
            trials = read_trials(run_dir)
        except StorageError as error:  # one damaged run folder: the others are still listed
            lines.append(f"{run_dir.name:{width}s} {str(error).removeprefix(str(run_dir) + '/')}")
            continue
        metric, mode = ranking(study)
        table = summary_table(hashable(trials), metric, mode).dropna(subset=["mean"])  # as status ranks them
        best = f"best {metric} {table['mean'].iloc[0]:.4f} (mean of {table['n'].iloc[0]})" if len(table) else \
            "no finished trial"
        count = f"{len(trials)}/{planned}" if planned and planned > len(trials) else str(len(trials))
        scale = ", ".join(sorted(trials["scale"].astype(str).unique()))
        lines.append(f"{run_dir.name:{width}s} {scale:6s} {count:>7s} trials  {best}  last {trials['finished_at'].max()}")
    return "\n".join(lines) if lines else f"no studies under {runs_root}"
