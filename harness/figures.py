"""Plotly figures of a study's rows, chosen from what it swept, with the paper's numbers beside
ours in their own labelled traces (on their own axis: paper scale is not comparable in absolute)."""
from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from .findings import METRIC, interval
from .paper import DATA_EFFICIENCY, PAPER_SERIES

PAPER_COLOURS = ("#999999", "#c7a26b", "#8fb3c9", "#b39ddb")


def parameters(trials: pd.DataFrame) -> list[str]:
    """Swept parameters: the columns named by a dotted path (e.g. pretrain.mask.ratio)."""
    return [c for c in trials.columns if "." in c]


def hashable(trials: pd.DataFrame) -> pd.DataFrame:
    """The rows with list-valued parameters (synth.speed: [0.3, 0.6], which Parquet gives back as
    arrays) written as text, so that configurations can be grouped, compared and drawn."""
    def text(value: Any) -> Any:
        if isinstance(value, str) or not hasattr(value, "__len__"):
            return value
        return str(value.tolist() if hasattr(value, "tolist") else list(value))
    listed = [name for name in parameters(trials) if trials[name].map(lambda v: text(v) is not v).any()]
    return trials.assign(**{name: trials[name].map(text) for name in listed}) if listed else trials


def summarize(trials: pd.DataFrame, by: list[str], metric: str = METRIC) -> pd.DataFrame:
    """Mean, 95% t-interval half-width and seed count of `metric` per configuration. Trials of one
    configuration on the same seed (an Optuna draw repeated) are one run, not two seeds."""
    ok = trials[trials["status"] == "ok"]
    if "seed" in ok:
        ok = ok.groupby([*by, "seed"], dropna=False)[metric].mean().reset_index()
    table = ok.groupby(by, dropna=False)[metric].agg(mean="mean", std="std", n="count").reset_index()
    table["ci95"] = [interval(group) for _, group in ok.groupby(by, dropna=False)[metric]]
    return table


def _numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values.dropna().infer_objects()) and values.notna().any()


def _determines(rows: pd.DataFrame, a: str, b: str) -> bool:
    """Each set value of `a` comes with at most one set value of `b` (b adds nothing beside a,
    e.g. a data-efficiency point that sets the pre-training and labelled clip counts together)."""
    both = rows[[a, b]].dropna()
    return not both.empty and both.groupby(a)[b].nunique().max() <= 1


def _groups(trials: pd.DataFrame, parameter: str) -> list[str]:
    """Other swept parameters with few distinct values that vary at a given value of `parameter`:
    one trace per combination of them."""
    return [p for p in parameters(trials) if p != parameter and trials[p].nunique() <= 6
            and trials[p].notna().any() and not _determines(trials, parameter, p)]


def plotted_parameters(trials: pd.DataFrame) -> dict[str, list[str]]:
    """Swept parameters worth an x axis, each with the ones that move with it: of two that
    determine each other (e.g. pre-training and labelled clip counts), the one set more often."""
    kept: dict[str, list[str]] = {}
    for p in sorted(parameters(trials), key=lambda p: trials[p].isna().sum()):
        twin = next((q for q in kept if _determines(trials, p, q) and _determines(trials, q, p)), None)
        if twin:
            kept[twin].append(p)
        else:
            kept[p] = []
    return {p: kept[p] for p in parameters(trials) if p in kept}


def _label(names: list[str], key: Any) -> str:
    values = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{n.rsplit('.', 1)[-1]}={'-' if pd.isna(v) else _shown(v)}"
                     for n, v in zip(names, values)) or "ours"


def parameter_figure(trials: pd.DataFrame, parameter: str, metric: str = METRIC,
                     alongside: list[str] | None = None) -> go.Figure:
    """Numeric parameter: a mean line and 95% band over seeds per group (log x for clip counts),
    rows without the parameter (e.g. scratch) as a flat reference; categorical: bars with intervals."""
    ok = trials[trials["status"] == "ok"]
    groups = _groups(ok, parameter)
    figure = go.Figure()
    numeric = _numeric(ok[parameter])
    for key, rows in (ok.groupby(groups, dropna=False) if groups else [((), ok)]):
        name = _label(groups, key)
        table = summarize(rows, [parameter], metric)
        if numeric:
            table = table.sort_values(parameter)
            flat, swept = table[table[parameter].isna()], table[table[parameter].notna()]
            if not swept.empty:
                _band(figure, swept, parameter, name, dashed=False)
            if not flat.empty:  # a baseline with no value of this parameter (scratch): drawn across the range
                xs = [ok[parameter].min(), ok[parameter].max()]
                baseline = pd.DataFrame({parameter: xs, "mean": [flat["mean"].iloc[0]] * 2,
                                         "ci95": [flat["ci95"].iloc[0]] * 2, "n": [flat["n"].iloc[0]] * 2})
                _band(figure, baseline, parameter, _baseline_name(rows, parameter, name if groups else ""), dashed=True)
        else:
            figure.add_trace(go.Bar(x=[str(v) for v in table[parameter]], y=table["mean"], name=name,
                                    customdata=table["n"], hovertemplate="%{x}: %{y:.3f} (n=%{customdata})",
                                    error_y={"type": "data", "array": table["ci95"].fillna(0).tolist()}))
    _paper_traces(figure, parameter, numeric)
    log_x = numeric and parameter.endswith("clips") and ok[parameter].min() > 0
    figure.update_layout(title=f"{metric} by {parameter} (mean over seeds, 95% interval)", template="plotly_white",
                         xaxis={"title": " = ".join([parameter, *(alongside or [])]), "type": "log" if log_x else "-"},
                         yaxis_title=f"{metric} (ours)",
                         barmode="group", legend={"orientation": "h", "y": -0.25})
    return figure


def _baseline_name(rows: pd.DataFrame, parameter: str, group: str) -> str:
    """What the rows without `parameter` are: their method (scratch, pretrained), within `group`."""
    flat = rows[rows[parameter].isna()]
    methods = flat["pretrain.method"].dropna().unique() if "pretrain.method" in flat else []
    what = str(methods[0]) if len(methods) == 1 else f"without {parameter.rsplit('.', 1)[-1]}"
    return f"{group}, {what}" if group else what


def _band(figure: go.Figure, table: pd.DataFrame, parameter: str, name: str, dashed: bool) -> None:
    x, mean, ci = table[parameter].tolist(), table["mean"].tolist(), table["ci95"].fillna(0).tolist()
    figure.add_trace(go.Scatter(x=x + x[::-1], y=[m + c for m, c in zip(mean, ci)] + [m - c for m, c in zip(mean, ci)][::-1],
                                fill="toself", line={"width": 0}, opacity=0.2, showlegend=False,
                                hoverinfo="skip", name=f"{name} 95% interval"))
    figure.add_trace(go.Scatter(x=x, y=mean, mode="lines" if dashed else "lines+markers", name=name,
                                line={"dash": "dash"} if dashed else {}, customdata=table["n"],
                                hovertemplate="%{x}: %{y:.3f} (n=%{customdata})"))


def _paper_traces(figure: go.Figure, parameter: str, numeric: bool) -> None:
    """The paper's top-1 % for the same values, on a second y axis, greyed and labelled."""
    series = PAPER_SERIES.get(parameter)
    if not series:
        return
    for colour, (dataset, values) in zip(PAPER_COLOURS, series.items()):
        xs = list(values) if numeric else [str(v) for v in values]
        style = {"marker": {"symbol": "diamond", "size": 9, "color": colour}, "line": {"dash": "dot", "color": colour}}
        figure.add_trace(go.Scatter(x=xs, y=list(values.values()), yaxis="y2", mode="markers+lines" if numeric else "markers",
                                    name=f"paper: ViT-B {dataset}, top-1 % (right axis)", **style))
    figure.update_layout(yaxis2={"title": "paper top-1 % (ViT-B, paper scale)", "overlaying": "y", "side": "right",
                                 "showgrid": False})


def data_efficiency_paper_figure() -> go.Figure:
    """Table 2 of the paper: scratch against VideoMAE by dataset size."""
    sizes = [v[0] for v in DATA_EFFICIENCY.values()]
    figure = go.Figure()
    for index, name in ((1, "scratch"), (2, "VideoMAE")):
        figure.add_trace(go.Scatter(x=sizes, y=[v[index] for v in DATA_EFFICIENCY.values()], mode="markers+lines+text",
                                    text=list(DATA_EFFICIENCY), textposition="top center", name=f"paper: {name}"))
    figure.update_layout(title="Paper, Table 2: top-1 % against training videos (ViT-B, 800 epochs)",
                         xaxis={"title": "training videos", "type": "log"}, yaxis_title="top-1 %", template="plotly_white")
    return figure


def domain_shift_figure(trials: pd.DataFrame, metric: str = METRIC) -> go.Figure | None:
    """Pre-training source x evaluation target: mean metric per cell, with its interval as text."""
    ok = trials[trials["status"] == "ok"]
    if not {"pretrain.source", "evaluate.source"} <= set(ok.columns) or ok["evaluate.source"].nunique() < 1:
        return None
    table = summarize(ok.assign(**{"pretrain.source": ok["pretrain.source"].fillna("none (scratch)")}),
                      ["pretrain.source", "evaluate.source"], metric)
    grid = table.pivot(index="pretrain.source", columns="evaluate.source", values="mean")
    text = table.assign(cell=[f"{m:.3f} ± {c:.3f} (n={n})" if c == c else f"{m:.3f} (n={n})"
                              for m, c, n in zip(table["mean"], table["ci95"], table["n"])]
                        ).pivot(index="pretrain.source", columns="evaluate.source", values="cell")
    figure = go.Figure(go.Heatmap(z=grid.values.tolist(), x=list(grid.columns), y=list(grid.index),
                                  text=text.values.tolist(), texttemplate="%{text}", colorscale="Blues",
                                  colorbar={"title": metric}))
    figure.update_layout(title=f"Domain shift: {metric} by pre-training source (rows) and target (columns)",
                         xaxis_title="evaluate.source", yaxis_title="pretrain.source", template="plotly_white")
    return figure


def loss_curve_figure(trials: pd.DataFrame, column: str = "pretrain_loss_curve", title: str = "Pre-training loss") -> go.Figure | None:
    """Mean loss per epoch for each configuration."""
    if column not in trials:
        return None
    ok = trials[(trials["status"] == "ok") & trials[column].map(lambda c: c is not None and len(c) > 0)]
    if ok.empty:
        return None
    figure = go.Figure()
    by = parameters(ok) or ["study"]
    for key, group in ok.groupby(by, dropna=False):
        curves = pd.DataFrame([list(c) for c in group[column]])
        figure.add_trace(go.Scatter(x=list(range(1, curves.shape[1] + 1)), y=curves.mean().tolist(),
                                    mode="lines", name=_label(by, key)))
    figure.update_layout(title=f"{title} (mean over seeds)", xaxis_title="epoch", yaxis_title="loss",
                         template="plotly_white")
    return figure


def draw_figures(trials: pd.DataFrame, metric: str = METRIC, mode: str = "max") -> list[go.Figure]:
    """An Optuna sweep's figures: `metric` against each drawn parameter, one point per trial (its
    draws are all different, so no line joins them), and the draws in the order they finished with
    the best so far."""
    ok = trials[trials["status"] == "ok"].sort_values("finished_at", kind="stable")
    if ok.empty:
        return []
    names = [p for p in parameters(ok) if ok[p].notna().any()]
    hover = [", ".join(f"{n.rsplit('.', 1)[-1]}={_shown(v)}" for n, v in zip(names, row)) + f", seed {seed}"
             for row, seed in zip(ok[names].itertuples(index=False), ok["seed"])]
    found = []
    for name in names:
        numeric = _numeric(ok[name])
        positive = numeric and ok[name].min() > 0
        figure = go.Figure(go.Scatter(x=ok[name] if numeric else ok[name].astype(str), y=ok[metric], mode="markers",
                                      text=hover, hovertemplate="%{text}: %{y:.3f}", name="trials"))
        figure.update_layout(title=f"{metric} by {name} (each trial; Optuna's draws)", template="plotly_white",
                             xaxis={"title": name, "type": "log" if positive and ok[name].max() >= 20 * ok[name].min()
                                    else "-"}, yaxis_title=metric)
        found.append(figure)
    best = ok[metric].cummax() if mode == "max" else ok[metric].cummin()
    order = go.Figure([go.Scatter(x=list(range(1, len(ok) + 1)), y=ok[metric], mode="markers", text=hover,
                                  hovertemplate="%{text}: %{y:.3f}", name="trial"),
                       go.Scatter(x=list(range(1, len(ok) + 1)), y=best, mode="lines", name="best so far")])
    order.update_layout(title=f"{metric} of the trials in the order they finished", template="plotly_white",
                        xaxis_title="trial", yaxis_title=metric)
    return [*found, order]


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def figures(trials: pd.DataFrame, optuna: bool = False, metric: str = METRIC, mode: str = "max") -> list[go.Figure]:
    """Every figure the rows support, in reading order (an Optuna sweep's: `draw_figures`)."""
    if optuna:
        found = [*draw_figures(trials, metric, mode), loss_curve_figure(trials),
                 loss_curve_figure(trials, "finetune_loss_curve", "Fine-tuning loss")]
        return [f for f in found if f is not None]
    swept, shift = plotted_parameters(trials), domain_shift_figure(trials)
    found = [parameter_figure(trials, p, alongside=twins) for p, twins in swept.items()
             if not (shift and p in ("pretrain.source", "evaluate.source"))]
    if any(p.endswith("clips") for p in swept):
        found.append(data_efficiency_paper_figure())
    found += [shift, loss_curve_figure(trials),
              loss_curve_figure(trials, "finetune_loss_curve", "Fine-tuning loss")]
    return [f for f in found if f is not None]
