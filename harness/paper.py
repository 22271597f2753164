"""The VideoMAE paper's findings and published numbers (Tong et al., NeurIPS 2022; ViT-B,
16 frames, 800 epochs; top-1 %, SSV2 / K400), as data the reports set beside our rows.

Each claim compares two values of one study parameter; a report makes every claim whose
parameter its study swept. The numbers are the paper's, at paper scale: not comparable to a
CPU-scale study in absolute terms, only in the direction and rough size of the effect."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Claim:
    finding: str     # the paper's finding, in words
    parameter: str   # the study parameter (dotted path) it is about
    better: Any      # the value the paper found better ...
    worse: Any       # ... than this one
    paper: str       # the paper's numbers for it, with the table they come from


CLAIMS: tuple[Claim, ...] = (
    Claim("a 90% tube ratio beats 75%", "pretrain.mask.ratio", 0.9, 0.75,
          "SSV2 69.6 vs 68.0, K400 80.0 vs 79.8 (Table 1b)"),
    Claim("an extremely high ratio (95%) is still good: no worse than 75%", "pretrain.mask.ratio", 0.95, 0.75,
          "best ratio extremely high; 95% still good on both datasets (Figure 3)"),
    Claim("a 90% tube ratio beats 50%", "pretrain.mask.ratio", 0.9, 0.5, "Figure 3: accuracy rises with the ratio up to 90%"),
    Claim("tube masking beats random masking", "pretrain.mask.strategy", "tube", "random",
          "SSV2 69.6 vs 68.3, K400 80.0 vs 79.5 (Table 1b)"),
    Claim("random masking beats frame masking", "pretrain.mask.strategy", "random", "frame",
          "SSV2 68.3 vs 61.5, K400 79.5 vs 76.5 (Table 1b)"),
    Claim("tube masking beats frame masking", "pretrain.mask.strategy", "tube", "frame",
          "SSV2 69.6 vs 61.5, K400 80.0 vs 76.5 (Table 1b)"),
    Claim("MSE beats L1", "pretrain.loss", "mse", "l1", "SSV2 69.6 vs 69.1, K400 80.0 vs 79.7 (Table 1f)"),
    Claim("MSE beats smooth L1", "pretrain.loss", "mse", "smooth_l1", "SSV2 69.6 vs 68.9, K400 80.0 vs 79.6 (Table 1f)"),
    Claim("L1 beats smooth L1", "pretrain.loss", "l1", "smooth_l1", "SSV2 69.1 vs 68.9, K400 79.7 vs 79.6 (Table 1f)"),
    Claim("a 4-block decoder beats a 1-block one", "model.overrides.decoder_depth", 4, 1,
          "SSV2 69.6 vs 68.5, K400 80.0 vs 79.0 (Table 1a)"),
    Claim("a 4-block decoder beats a 2-block one", "model.overrides.decoder_depth", 4, 2,
          "SSV2 69.6 vs 69.2, K400 80.0 vs 79.2 (Table 1a)"),
    Claim("a 4-block decoder beats an 8-block one", "model.overrides.decoder_depth", 4, 8,
          "SSV2 69.6 vs 69.3, K400 80.0 vs 79.7 (Table 1a)"),
    Claim("VideoMAE pre-training beats training from scratch", "pretrain.method", "videomae", "scratch",
          "SSV2 69.6 vs 32.6, K400 80.0 vs 68.8, UCF101 91.3 vs 51.4, HMDB51 62.6 vs 18.0 (Tables 1d, 2)"),
)

# Reference series for figures: parameter -> {dataset: {value: top-1 %}}.
PAPER_SERIES: dict[str, dict[str, dict[Any, float]]] = {
    "pretrain.mask.strategy": {"SSV2": {"tube": 69.6, "random": 68.3, "frame": 61.5},
                               "K400": {"tube": 80.0, "random": 79.5, "frame": 76.5}},
    "pretrain.loss": {"SSV2": {"mse": 69.6, "l1": 69.1, "smooth_l1": 68.9},
                      "K400": {"mse": 80.0, "l1": 79.7, "smooth_l1": 79.6}},
    "model.overrides.decoder_depth": {"SSV2": {1: 68.5, 2: 69.2, 4: 69.6, 8: 69.3},
                                      "K400": {1: 79.0, 2: 79.2, 4: 80.0, 8: 79.7}},
    "pretrain.mask.ratio": {"SSV2 (tube)": {0.75: 68.0, 0.9: 69.6}, "K400 (tube)": {0.75: 79.8, 0.9: 80.0}},
    "pretrain.method": {"SSV2": {"videomae": 69.6, "scratch": 32.6}, "K400": {"videomae": 80.0, "scratch": 68.8},
                        "UCF101": {"videomae": 91.3, "scratch": 51.4}, "HMDB51": {"videomae": 62.6, "scratch": 18.0}},
}

# Data efficiency (Table 2): training videos -> (scratch, VideoMAE) top-1 %.
DATA_EFFICIENCY = {"HMDB51": (3_500, 18.0, 62.6), "UCF101": (9_500, 51.4, 91.3),
                   "SSV2": (169_000, 32.6, 69.6), "K400": (240_000, 68.8, 80.0)}

DOMAIN_SHIFT = ("Pre-training on 42k SSV2 videos gives 68.7% on SSV2, more than K400 pre-training with "
                "240k videos (68.5%): in-domain data of a fifth the size wins under domain shift.")
