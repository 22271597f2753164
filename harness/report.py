"""Result rows (trials.parquet) -> reports/<study>.html (self-contained plotly) and .md tables.

Data flows one way: this module reads Parquet and writes reports; it never touches a run."""
from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from .results import read_trials

METRIC = "eval_top1"
# Two-sided 95% Student-t quantiles by degrees of freedom (scipy is not a dependency).
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086]


def parameters(trials: pd.DataFrame) -> list[str]:
    """Swept parameters: the columns named by a dotted path (e.g. pretrain.mask.ratio)."""
    return [c for c in trials.columns if "." in c]


def summarize(trials: pd.DataFrame, by: list[str], metric: str = METRIC) -> pd.DataFrame:
    """Mean, 95% t-interval half-width and seed count of `metric` per configuration."""
    ok = trials[trials["status"] == "ok"]
    grouped = ok.groupby(by, dropna=False)[metric]
    table = grouped.agg(mean="mean", std="std", n="count").reset_index()
    table["ci95"] = [_t95(n) * s / math.sqrt(n) if n > 1 else float("nan")
                     for n, s in zip(table["n"], table["std"])]
    return table


def _t95(n: int) -> float:
    return _T95[n - 2] if n - 2 < len(_T95) else 1.96


def parameter_figure(trials: pd.DataFrame, parameter: str, metric: str = METRIC) -> go.Figure:
    """Numeric parameter: mean line with a 95% band over seeds; categorical: bars with intervals."""
    table = summarize(trials, [parameter], metric).sort_values(parameter)
    x, mean, ci = table[parameter].tolist(), table["mean"].tolist(), table["ci95"].fillna(0).tolist()
    figure = go.Figure()
    if pd.api.types.is_numeric_dtype(table[parameter]):
        figure.add_trace(go.Scatter(x=x + x[::-1], y=[m + c for m, c in zip(mean, ci)] +
                                    [m - c for m, c in zip(mean, ci)][::-1], fill="toself",
                                    line={"width": 0}, opacity=0.25, name="95% interval", hoverinfo="skip"))
        figure.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=f"mean {metric}",
                                    customdata=table["n"], hovertemplate="%{x}: %{y:.3f} (n=%{customdata})"))
    else:
        figure.add_trace(go.Bar(x=[str(v) for v in x], y=mean, name=f"mean {metric}",
                                error_y={"type": "data", "array": ci}))
    figure.update_layout(title=f"{metric} by {parameter} (mean over seeds, 95% interval)",
                         xaxis_title=parameter, yaxis_title=metric, template="plotly_white")
    return figure


def loss_curve_figure(trials: pd.DataFrame) -> go.Figure | None:
    """Mean pre-training loss per epoch for each configuration."""
    ok = trials[(trials["status"] == "ok") & trials["pretrain_loss_curve"].map(lambda c: c is not None and len(c) > 0)]
    if ok.empty:
        return None
    figure = go.Figure()
    by = parameters(ok) or ["study"]
    for key, group in ok.groupby(by, dropna=False):
        curves = pd.DataFrame([list(c) for c in group["pretrain_loss_curve"]])
        label = ", ".join(f"{p}={v}" for p, v in zip(by, key if isinstance(key, tuple) else (key,)))
        figure.add_trace(go.Scatter(x=list(range(1, curves.shape[1] + 1)), y=curves.mean().tolist(),
                                    mode="lines", name=label))
    figure.update_layout(title="Pre-training loss (mean over seeds)", xaxis_title="epoch",
                         yaxis_title="loss", template="plotly_white")
    return figure


def figures(trials: pd.DataFrame) -> list[go.Figure]:
    found = [parameter_figure(trials, p) for p in parameters(trials)]
    curves = loss_curve_figure(trials)
    return found + ([curves] if curves else [])


def summary_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: the metric's mean, interval and seeds, mean loss and wall time."""
    by = parameters(trials) or ["study"]
    extra = trials[trials["status"] == "ok"].groupby(by, dropna=False)[["pretrain_loss", "wall_time_s"]].mean()
    table = summarize(trials, by).merge(extra.reset_index(), on=by, how="left")
    return table.sort_values("mean", ascending=False)


def status_table(run_dir: Path) -> str:
    """`harness status`: how many trials finished, and each configuration, best first."""
    trials = read_trials(run_dir)
    header = _header(trials)
    lines = [f"{header['study']}: {header['trials']} trials recorded ({header['scale']} scale), "
             f"{header['total trial time']} of trial time"]
    return "\n".join(lines) + "\n" + summary_table(trials).to_string(index=False, float_format=lambda v: f"{v:.4g}")


def runs_table(runs_root: Path) -> str:
    """`harness ls`: every study under a runs folder with its trial count and best metric."""
    lines = []
    for run_dir in sorted(p for p in runs_root.glob("*") if (p / "trials.parquet").exists()):
        trials = read_trials(run_dir)
        ok = trials[trials["status"] == "ok"]
        best = f"best {METRIC} {ok[METRIC].max():.4f}" if len(ok) else "no finished trial"
        lines.append(f"{run_dir.name:24s} {len(trials):4d} trials  {best}  last {trials['finished_at'].max()}")
    return "\n".join(lines) if lines else f"no studies with results under {runs_root}"


def _markdown(table: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def _header(trials: pd.DataFrame) -> dict[str, str]:
    first = trials.iloc[0]
    return {"study": str(first["study"]), "scale": ", ".join(sorted(trials["scale"].astype(str).unique())),
            "trials": str(len(trials)), "seeds": str(trials["seed"].nunique()),
            "commit": ", ".join(sorted(trials["git_commit"].dropna().astype(str).unique())) or "unknown",
            "total trial time": f"{trials['wall_time_s'].sum() / 60:.1f} min"}


def write_report(run_dir: Path, out_dir: Path) -> Path:
    """Write <out_dir>/<study>.html and .md from <run_dir>/trials.parquet; returns the html path."""
    trials = read_trials(run_dir)
    header, table = _header(trials), summary_table(trials)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = header["study"]
    facts = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in header.items())
    charts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures(trials))]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>"
            f"<h1>Study: {html.escape(name)}</h1><ul>{facts}</ul>{''.join(charts)}"
            f"<h2>Configurations</h2>{table.to_html(index=False, float_format=lambda v: f'{v:.4g}')}"
            "</body></html>")
    html_path = out_dir / f"{name}.html"
    html_path.write_text(page)
    facts_md = "\n".join(f"- **{k}**: {v}" for k, v in header.items())
    html_path.with_suffix(".md").write_text(
        f"# Study: {name}\n\n{facts_md}\n\n## Configurations ({METRIC}, mean over seeds, 95% interval)\n\n"
        f"{_markdown(table)}\n")
    return html_path
