"""Findings computed from result rows, never typed: each paper claim whose parameter a study swept
becomes a comparison (difference of means, 95% interval, seeds) with a verdict the rows support.

Rows that leave a swept parameter empty (a point that does not set it, e.g. a scratch baseline
that has no pre-training clip count) are compared against every value of that parameter."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .paper import CLAIMS, DOMAIN_SHIFT, Claim

METRIC = "eval_top1"
# Two-sided 95% Student-t quantiles by degrees of freedom 1..30 (scipy is not a dependency).
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]

REPRODUCED, REVERSED, INCONCLUSIVE = "reproduced", "not reproduced (reversed)", "inconclusive"


def t95(degrees: float) -> float:
    """The 95% two-sided Student-t quantile (normal beyond 30 degrees of freedom)."""
    if degrees < 1 or math.isnan(degrees):
        return float("nan")
    return _T95[min(int(degrees), len(_T95)) - 1] if degrees <= len(_T95) else 1.96


def interval(values: pd.Series) -> float:
    """Half-width of the 95% t-interval of the mean (NaN for fewer than two values)."""
    n = values.count()
    return t95(n - 1) * values.std() / math.sqrt(n) if n > 1 else float("nan")


def difference(better: pd.Series, worse: pd.Series) -> dict[str, Any]:
    """mean(better) - mean(worse) with a 95% interval: paired by seed when both have the same
    seeds (same data order and initial weights), else Welch's unequal-variance interval."""
    a, b = better.dropna(), worse.dropna()
    paired = len(a) > 1 and sorted(a.index) == sorted(b.index) and a.index.is_unique and b.index.is_unique
    if paired:
        gaps = a - b.reindex(a.index)
        mean, half, n = gaps.mean(), interval(gaps), len(gaps)
    else:
        mean, n = a.mean() - b.mean(), min(len(a), len(b))
        va, vb = (a.var() / len(a) if len(a) > 1 else float("nan")), (b.var() / len(b) if len(b) > 1 else float("nan"))
        spread = va + vb
        degrees = spread ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if n > 1 and spread > 0 else n - 1
        half = t95(degrees) * math.sqrt(spread) if n > 1 else float("nan")
    return {"better_mean": a.mean(), "worse_mean": b.mean(), "difference": mean,
            "ci_low": mean - half, "ci_high": mean + half, "seeds": int(n), "paired": paired,
            "verdict": verdict(mean, half, n)}


def verdict(mean: float, half: float, n: int) -> str:
    if n < 2 or math.isnan(half):
        return f"{INCONCLUSIVE} (one seed)"
    if mean - half > 0:
        return REPRODUCED
    if mean + half < 0:
        return REVERSED
    return INCONCLUSIVE


def _matching(rows: pd.DataFrame, context: dict[str, Any]) -> pd.DataFrame:
    keep = pd.Series(True, index=rows.index)
    for name, value in context.items():
        keep &= rows[name].isna() | (rows[name] == value)
    return rows[keep]


def _swept_with(better_rows: pd.DataFrame, worse_rows: pd.DataFrame, others: list[str]) -> dict[str, tuple]:
    """Parameters swept together with the claim's: one value on each side, a different one on each
    (frame masking at 0.875 against tube at 0.9). They are part of what is compared, not a context."""
    paired = {}
    for name in others:
        better, worse = better_rows[name].dropna().unique(), worse_rows[name].dropna().unique()
        if len(better) == len(worse) == 1 and better[0] != worse[0]:
            paired[name] = (better[0], worse[0])
    return paired


def _by_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    return rows.groupby("seed")[metric].mean()


def _contexts(rows: pd.DataFrame, others: list[str]) -> list[dict[str, Any]]:
    """Each combination of the other swept parameters' set values (one empty context if none)."""
    if not others:
        return [{}]
    present = rows[others].drop_duplicates()
    combos = [{k: v for k, v in zip(others, values) if not pd.isna(v)} for values in present.itertuples(index=False)]
    unique = {tuple(c.items()): c for c in combos}.values()
    # A baseline's partial combination (e.g. no clip count) is covered by the full ones it matches.
    return [c for c in unique if not any(c.items() < other.items() for other in unique)] or [{}]


def claim_rows(trials: pd.DataFrame, parameters: list[str], claim: Claim, metric: str) -> list[dict[str, Any]]:
    """The claim's comparison in each context of the other swept parameters."""
    ok = trials[trials["status"] == "ok"]
    better_rows, worse_rows = ok[ok[claim.parameter] == claim.better], ok[ok[claim.parameter] == claim.worse]
    if better_rows.empty or worse_rows.empty:
        return []
    paired = _swept_with(better_rows, worse_rows, [p for p in parameters if p != claim.parameter])
    others = [p for p in parameters if p != claim.parameter and p not in paired]
    comparison = f"{claim.parameter}: {claim.better} vs {claim.worse}" + "".join(
        f" ({p} {_value(b)} vs {_value(w)})" for p, (b, w) in paired.items())
    found = []
    for context in _contexts(pd.concat([better_rows, worse_rows]), others):
        better, worse = _matching(better_rows, context), _matching(worse_rows, context)
        if better.empty or worse.empty:
            continue
        found.append({"finding": claim.finding, "comparison": comparison,
                      "context": _describe(context), **difference(_by_seed(better, metric), _by_seed(worse, metric)),
                      "paper": claim.paper})
    return found


def domain_shift_rows(trials: pd.DataFrame, metric: str) -> list[dict[str, Any]]:
    """For each evaluation target: pre-training on the target's own domain against each other source."""
    ok = trials[trials["status"] == "ok"]
    if not {"pretrain.source", "evaluate.source"} <= set(ok.columns):
        return []
    found = []
    for target, on_target in ok.groupby("evaluate.source"):
        inside = on_target[on_target["pretrain.source"] == target]
        for source, outside in on_target[on_target["pretrain.source"] != target].groupby("pretrain.source"):
            if inside.empty:
                continue
            found.append({"finding": "in-domain pre-training beats out-of-domain pre-training",
                          "comparison": f"pretrain.source: {target} vs {source}", "context": f"evaluate.source={target}",
                          **difference(_by_seed(inside, metric), _by_seed(outside, metric)), "paper": DOMAIN_SHIFT})
    return found


def findings(trials: pd.DataFrame, parameters: list[str], metric: str = METRIC) -> pd.DataFrame:
    """Every comparison this study's rows can make, one row each."""
    found = [row for claim in CLAIMS if claim.parameter in parameters
             for row in claim_rows(trials, parameters, claim, metric)]
    if "pretrain.source" in parameters:
        found += domain_shift_rows(trials, metric)
    return pd.DataFrame(found)


def _describe(context: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in context.items()) or "all"


def _value(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value
