"""What a study is: the typed, validated settings of its trials, its sweep and its resources.
One place per concept; `study_file.py` reads a YAML file into a Study."""
from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.choices import LOSS_NAMES, STRATEGIES, masked_count
from models.presets import ModelConfig, model_config

from .synth import DECORD_UNREADABLE_WIDTHS, SynthParams, unreadable_widths

SCALES = ("smoke", "cpu", "paper")
DEFAULT_SCALE = "cpu"


class StudyError(ValueError):
    """A bad study file: the message is one line naming the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    preset: str = "tiny"
    overrides: dict[str, Any] = {}

    def build(self) -> ModelConfig:
        return model_config(self.preset, **self.overrides)

    @model_validator(mode="after")
    def _builds(self) -> "ModelSpec":
        self.build()  # ValueError naming the preset or field: "model: depth must be a whole number..."
        return self


class SynthSpec(Strict):
    """How synthetic sources (`synth:<domain>`) are generated; frames and size follow the model."""
    train_clips: int = Field(512, ge=1)
    val_clips: int = Field(256, ge=1)
    seed: int = Field(0, ge=0)
    background: Literal["black", "texture", "image"] = "black"  # image: a real video frame
    distractors: int = Field(0, ge=0)
    noise: float = Field(0.0, ge=0, le=1)
    speed: tuple[float, float] = (0.6, 1.0)  # range of the labelled motion's extent
    camera: float = Field(0.5, ge=0)        # background pan, pixels per frame

    @field_validator("speed")
    @classmethod
    def _ordered_speed(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"must be [min, max] with 0 < min <= max, not {list(value)}")
        return value


class MaskSpec(Strict):
    strategy: str = "tube"
    ratio: float = Field(0.9, gt=0, lt=1)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown mask strategy {value!r}; choose from {list(STRATEGIES)}")
        return value


class DecoderMaskSpec(Strict):
    """VideoMAE V2 dual masking: the decoder reconstructs only a running-cell subset."""
    strategy: Literal["running_cell"] = "running_cell"
    ratio: float = Field(0.5, ge=0.25, lt=1)


class PretrainSpec(Strict):
    # videomae: pre-train here (from `init` if set); scratch: no pre-training, the seed's random
    # weights (the baseline); pretrained: no pre-training here, `init`'s weights as they are
    method: Literal["videomae", "scratch", "pretrained"] = "videomae"
    # A pre-training checkpoint to start from: the official VideoMAE code's (e.g. its released
    # ViT-B K400 weights) or this harness's checkpoint.pt; relative to the study file
    init: str | None = None
    source: str = "synth:motion"
    clips: int | None = Field(None, ge=1)  # None: the whole train split
    stride: int = Field(1, ge=1)           # temporal stride between sampled frames
    num_sample: int = Field(1, ge=1)       # augmented clips per decoded video (VideoMAE V2)
    scales: list[Annotated[float, Field(gt=0, le=1)]] = Field([1.0, 0.875, 0.75, 0.66], min_length=1)
    flip: bool = False                     # random horizontal flip (off: it swaps left and right)
    mask: MaskSpec = MaskSpec()
    decoder_mask: DecoderMaskSpec | None = None  # None: reconstruct every masked token
    loss: str = "mse"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)      # global, split over the trial's workers
    lr: float = Field(1e-3, gt=0)          # peak learning rate for the global batch
    min_lr: float = Field(1e-5, ge=0)
    warmup_epochs: int = Field(2, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    clip_grad: float | None = Field(1.0, gt=0)
    max_bad_steps: int = Field(0, ge=0)   # NaN/inf steps skipped before the trial stops as diverged

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        if value not in LOSS_NAMES:
            raise ValueError(f"unknown loss {value!r}; choose from {list(LOSS_NAMES)}")
        return value

    @model_validator(mode="after")
    def _init_as_the_method_needs(self) -> "PretrainSpec":
        if self.method == "pretrained" and not self.init:
            raise ValueError("method pretrained evaluates the weights in init: set pretrain.init to a checkpoint")
        if self.method == "scratch" and self.init:
            raise ValueError("method scratch starts from random weights: leave out init (pretrain.init: null on a "
                             "sweep point), or use method pretrained")
        return self

    @property
    def trains(self) -> bool:
        """Whether the trial has a pre-training stage (scratch and pretrained have none)."""
        return self.method == "videomae"


class FinetuneSpec(Strict):
    """Fine-tuning recipe (protocol: finetune), the VideoMAE code's minus mixup, CutMix, RandAugment
    and random erasing. `lr` is the peak rate itself (the code scales its --lr by batch / 256)."""
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)      # global, split over the trial's workers
    lr: float = Field(1e-3, gt=0)          # peak, for the head; layer i gets lr * decay^(L + 1 - i)
    min_lr: float = Field(1e-6, ge=0)
    warmup_epochs: int = Field(3, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    layer_decay: float = Field(0.75, gt=0, le=1)
    drop_path: float = Field(0.1, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    clip_grad: float | None = Field(None, gt=0)


class EvaluateSpec(Strict):
    source: str = "synth:motion"
    # linear: a probe on frozen features; knn: k nearest neighbours of frozen features (cosine);
    # finetune: the whole encoder trained with a classifier head (the paper's protocol)
    protocol: Literal["linear", "knn", "finetune"] = "linear"
    train_clips: int | None = Field(None, ge=1)  # labelled clips to learn from; None: all
    features: Literal["temporal", "mean"] = "temporal"  # linear/knn: temporal keeps the slots' order
    epochs: int = Field(200, ge=1)         # linear: full-batch steps of the probe
    lr: float = Field(1e-2, gt=0)          # linear
    weight_decay: float = Field(1e-3, ge=0)  # linear
    knn_k: int = Field(20, ge=1)           # knn: neighbours that vote
    finetune: FinetuneSpec = FinetuneSpec()
    batch_size: int = Field(64, ge=1)      # videos per worker per forward pass, with all their test views
    test_clips: int = Field(1, ge=1)       # temporal views per video, features averaged
    test_crops: Literal[1, 3] = 1          # spatial views: centre, or both ends and centre
    # Frames of a clip for evaluation: segment = one per T equal segments (TSN; the VideoMAE code
    # on SSV2), random in fine-tuning; window = T frames at `stride` (the code on Kinetics)
    sampling: Literal["segment", "window"] = "segment"
    stride: int | None = Field(None, ge=1)  # window: frames between a view's frames; None: pretrain.stride

    @model_validator(mode="after")
    def _stride_for_windows(self) -> "EvaluateSpec":
        if self.stride is not None and self.sampling != "window":  # it would be ignored
            raise ValueError("stride sets the frames between a window's frames: it needs sampling: window")
        return self

    def window_stride(self, pretrain: PretrainSpec) -> int:
        return self.stride or pretrain.stride


class ResourcesSpec(Strict):
    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_concurrent_trials: int | None = Field(None, ge=1)  # None: as many as the cluster fits
    # One worker per trial: each stage runs in Ray Train's local mode, in the trial's own process,
    # with no Train worker group to start for each (most of Ray's cost on short trials).
    # False: always a worker group.
    local_mode: bool = True
    # Processes per worker that decode and augment clips while it trains. auto: on GPUs all the
    # worker's CPUs but one (the GPU would otherwise wait on decoding); on CPUs none, since the
    # cores do the model's maths and loading runs between steps (BENCHMARKS.md: several times ahead).
    loader_workers: int | Literal["auto"] = "auto"
    # Seconds of training between a stage's checkpoints (0: every epoch; its last epoch always):
    # where epochs take seconds and checkpoints a GB (ViT-B on a few thousand clips), writing one
    # every epoch would cost more than the epochs. An interrupted stage resumes from the last one.
    checkpoint_interval_s: float = Field(0.0, ge=0)

    @field_validator("loader_workers", mode="before")
    @classmethod
    def _processes(cls, value: Any) -> Any:
        if value != "auto" and (type(value) is not int or value < 0):
            raise ValueError(f"a number of processes (0, 1, ...) or auto, not {value!r}")
        return value

    def loader_processes(self) -> int:
        if self.loader_workers != "auto":
            return self.loader_workers
        return max(0, int(self.cpus_per_worker) - 1) if self.gpus_per_worker > 0 else 0


class Distribution(Strict):
    """An Optuna search range: uniform float, log-uniform float or integer (both ends included)."""
    type: Literal["float", "loguniform", "int"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> "Distribution":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("a loguniform range needs low > 0")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"an int range needs whole-number ends, not {self.low:g} to {self.high:g}")
        return self


class EarlyStoppingSpec(Strict):
    """ASHA (asynchronous successive halving) on the pre-training loss: at pre-training epochs
    grace_period, grace_period x reduction_factor, ... a trial whose loss is not among the best
    1/reduction_factor of the trials that reached that epoch stops, with status `stopped`. Losses
    must be comparable across the sweep: sweep the optimizer or schedule, not the loss or mask."""
    method: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1)           # pre-training epochs before any trial is stopped
    reduction_factor: float = Field(2.0, gt=1)   # keep the best 1/reduction_factor at each rung


def repeated(values: list) -> tuple[int, int] | None:
    """(first, again): the indices of the first value that `values` holds twice; None if none."""
    for again, value in enumerate(values):
        if value in values[:again]:
            return values.index(value), again
    return None


class SweepSpec(Strict):
    """grid: every combination of the listed values, crossed with each of `points` (explicit
    configurations, e.g. a scratch baseline, or a data source with its own clip count), x seeds.
    optuna: `num_samples` configurations drawn by Optuna's TPE sampler (seeded) from lists
    (categorical) and ranges, each run once per seed; Optuna is told the mean over the seeds."""
    method: Literal["grid", "optuna"] = "grid"
    parameters: dict[str, list[Any] | Distribution] = {}  # dotted path -> values or a range
    points: list[dict[str, Any]] = []     # grid only: each a mapping of dotted paths to values
    num_samples: int = Field(10, ge=1)    # optuna only: draws, each run on every seed
    sampler_seed: int = 0                 # optuna only
    # what optuna optimizes: a trial's final result (anything else never reaches Optuna)
    metric: Literal["eval_top1", "eval_top5", "pretrain_loss"] = "eval_top1"
    early_stopping: EarlyStoppingSpec | None = None  # optional ASHA on the pre-training loss
    mode: Literal["max", "min"] = "max"

    @model_validator(mode="after")
    def _grid_takes_lists(self) -> "SweepSpec":
        ranges = [name for name, values in self.parameters.items() if isinstance(values, Distribution)]
        if self.method == "grid" and ranges:
            raise ValueError(f"parameters.{ranges[0]}: a grid sweep takes a list of values; ranges need method: optuna")
        if self.method == "optuna" and self.points:
            raise ValueError("points: explicit points belong to a grid sweep")
        if self.method == "optuna" and not self.parameters:
            raise ValueError("parameters: an Optuna sweep needs at least one parameter to draw")
        for point in self.points:
            shared = set(point) & set(self.parameters)
            if shared:
                raise ValueError(f"points: {sorted(shared)[0]} is also a swept parameter")
        # A repeated configuration is the same trial run again: wasted time, and a report that
        # counts it as another sample (n grows, the spread shrinks to nothing)
        for name, values in self.parameters.items():
            if isinstance(values, list) and (twice := repeated(values)):
                raise ValueError(f"parameters.{name}: {values[twice[0]]!r} is listed twice")
        if twice := repeated(self.points):
            raise ValueError(f"points[{twice[1]}]: the same configuration as points[{twice[0]}]")
        return self

    def grid_points(self) -> list[dict[str, Any]]:
        """Every configuration of a grid sweep (dotted path -> value), in a stable order: the points
        vary fastest, so trials started together rarely share a pre-training (domain_shift's encoders,
        each evaluated on two targets, would otherwise pre-train one at a time)."""
        names = list(self.parameters)
        combos = [dict(zip(names, values)) for values in itertools.product(*(self.parameters[n] for n in names))]
        return [{**point, **combo} for combo in combos for point in (self.points or [{}])]

    def swept_names(self) -> list[str]:
        """The dotted paths a trial's row records: the parameters, then any the points set."""
        names = list(self.parameters)
        for point in self.points:
            names += [name for name in point if name not in names]
        return names


class Experiment(Strict):
    """Everything one trial needs: what the sweep varies lives here."""
    model: ModelSpec = ModelSpec()
    synth: SynthSpec = SynthSpec()
    pretrain: PretrainSpec = PretrainSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    # autocast dtype of the model's matmuls; auto: bf16 where it is fast (AMX CPUs, Ampere or newer
    # GPUs), fp16 with loss scaling on older GPUs with tensor cores (V100, T4), else fp32
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    on_error: Literal["skip", "raise"] = "skip"  # bad videos: skip (logged, counted) or stop

    @model_validator(mode="after")
    def _mask_fits_the_grid(self) -> "Experiment":
        """Checked here, not in the trial: a mask of no token gives a loss over nothing (NaN)."""
        config, mask = self.model.build(), self.pretrain.mask
        slots, rows, cols = config.grid
        cells = [field for field, used in (("pretrain.mask", mask.strategy == "running_cell"),
                                           ("pretrain.decoder_mask", self.pretrain.decoder_mask is not None)) if used]
        if cells and (rows % 2 or cols % 2):
            raise ValueError(f"{cells[0]}: running-cell masking needs an even token grid, not {rows}x{cols}")
        masked, total = masked_count(mask.strategy, (slots, rows, cols), mask.ratio), slots * rows * cols
        if not 0 < masked < total:
            raise ValueError(f"pretrain.mask: {mask.strategy} masking at ratio {mask.ratio} masks {masked} of the "
                             f"{total} tokens of a {slots}x{rows}x{cols} grid; it must mask some and leave some")
        size = config.img_size
        if size in DECORD_UNREADABLE_WIDTHS and any(
                source.startswith("synth:") for source in (self.pretrain.source, self.evaluate.source)):
            raise ValueError(f"model: synthetic clips are made at the model's img_size, and decord cannot decode "
                             f"frames {size} pixels wide ({unreadable_widths()}); choose another img_size")
        return self

    def synth_params(self) -> SynthParams:
        """Generation parameters for `synth:` sources; frames and size follow the model."""
        config = self.model.build()
        return SynthParams(frames=config.num_frames * self.pretrain.stride, size=config.img_size,
                           **self.synth.model_dump())


class Study(Experiment):
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a folder name: not ., .. or hidden
    description: str = ""
    seeds: list[int] = Field([0], min_length=1)

    @field_validator("seeds")
    @classmethod
    def _seeds_once(cls, seeds: list[int]) -> list[int]:
        if twice := repeated(seeds):  # the same trials again, counted as more samples
            raise ValueError(f"seed {seeds[twice[0]]} is listed twice")
        return seeds
    sweep: SweepSpec = SweepSpec()
    resources: ResourcesSpec = ResourcesSpec()
    scale: str = DEFAULT_SCALE

    def experiment(self, overrides: dict[str, Any] | None = None) -> Experiment:
        """This study's trial settings with dotted-path overrides (a sweep point) applied."""
        raw = self.model_dump(include=set(Experiment.model_fields))
        for path, value in (overrides or {}).items():
            set_path(raw, path, value)
        return Experiment.model_validate(raw)

    def trial_count(self, seeds: list[int] | None = None) -> int:
        """The trials a run of this study makes: each grid point once per seed (of `seeds`, default
        the study's), or each of Optuna's draws once per seed."""
        per_seed = self.sweep.num_samples if self.sweep.method == "optuna" else len(self.sweep.grid_points())
        return per_seed * len(seeds or self.seeds)


def set_path(tree: dict, path: str, value: Any) -> None:
    """tree['a']['b']['c'] = value for path 'a.b.c', creating mappings on the way."""
    *parents, leaf = path.split(".")
    for key in parents:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise KeyError(path)
        tree = node
    tree[leaf] = value


def get_path(tree: dict, path: str) -> Any:
    """tree['a']['b']['c'] for path 'a.b.c', or None where the path is not set."""
    for key in path.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree
