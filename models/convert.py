"""Weight import: Hugging Face `transformers` VideoMAE models and the official repository's layout.

Our parameter names follow the official layout (encoder.blocks.N.attn.qkv, decoder.head, ...),
with one difference: the official q_bias/v_bias pair is one qkv bias here, its k part zero."""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from .classifier import VideoClassifier
from .presets import ModelConfig
from .videomae import VideoMAE

# Hugging Face block parameter -> ours (within one block). q/k/v are fused separately.
_HF_BLOCK = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
}


def config_from_transformers(hf_config: Any) -> ModelConfig:
    """Our ModelConfig for a `transformers.VideoMAEConfig`."""
    mlp_ratio = hf_config.intermediate_size / hf_config.hidden_size
    decoder_ratio = getattr(hf_config, "decoder_intermediate_size", 0) / getattr(hf_config, "decoder_hidden_size", 1)
    if hasattr(hf_config, "decoder_hidden_size") and abs(mlp_ratio - decoder_ratio) > 1e-9:
        raise ValueError("encoder and decoder MLP ratios differ; this model uses one ratio for both")
    if hf_config.hidden_act != "gelu" or not getattr(hf_config, "qv_bias", getattr(hf_config, "qkv_bias", True)):
        raise ValueError("only exact-GELU models with q/v biases are supported")  # transformers 4 says qkv_bias
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if getattr(hf_config, name, 0.0):  # VideoMAE uses none; ours has none to set
            raise ValueError(f"{name} {getattr(hf_config, name)}: dropout is not supported (VideoMAE uses none)")
    return ModelConfig(
        img_size=_square(hf_config.image_size, "image_size"), num_frames=hf_config.num_frames,
        patch_size=_square(hf_config.patch_size, "patch_size"),
        tubelet_size=hf_config.tubelet_size, in_chans=hf_config.num_channels,
        embed_dim=hf_config.hidden_size, depth=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads, mlp_ratio=mlp_ratio,
        decoder_embed_dim=hf_config.decoder_hidden_size, decoder_depth=hf_config.decoder_num_hidden_layers,
        decoder_num_heads=hf_config.decoder_num_attention_heads, norm_eps=hf_config.layer_norm_eps)


def _square(size: Any, name: str) -> int:
    """A side from a transformers size, which may be a pair: this model takes square frames only."""
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"{name} {tuple(size)}: only square frames and patches are supported")
        size = size[0]
    return size


def transformers_config(config: ModelConfig, **extra: Any) -> dict[str, Any]:
    """The `transformers.VideoMAEConfig` fields of a model of this shape and numerics (layer-norm
    eps included), as its config.json holds them. `qkv_bias` is the name transformers 4 reads;
    transformers 5 reads it as `qv_bias`. `use_mean_pooling` is False, as our VideoMAE's encoder
    ends in a norm (transformers' default, True, leaves it out); a classifier passes True."""
    extra = {"use_mean_pooling": False, **extra}
    return dict(
        image_size=config.img_size, patch_size=config.patch_size, num_channels=config.in_chans,
        num_frames=config.num_frames, tubelet_size=config.tubelet_size, hidden_size=config.embed_dim,
        num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
        intermediate_size=int(config.embed_dim * config.mlp_ratio), hidden_act="gelu", qkv_bias=True,
        decoder_hidden_size=config.decoder_embed_dim, decoder_num_hidden_layers=config.decoder_depth,
        decoder_num_attention_heads=config.decoder_num_heads,
        decoder_intermediate_size=int(config.decoder_embed_dim * config.mlp_ratio),
        layer_norm_eps=config.norm_eps, **extra)


def config_to_transformers(config: ModelConfig, **extra: Any) -> Any:
    """A `transformers.VideoMAEConfig` of the same shape and numerics, for parity tests and
    benchmarks. `transformers` is imported only here."""
    import transformers

    return transformers.VideoMAEConfig(**transformers_config(config, **extra))


def _convert_hf_blocks(state: dict[str, torch.Tensor], source: str, target: str) -> dict[str, torch.Tensor]:
    """Blocks under `source`.N.* (Hugging Face) -> `target`.N.* (ours), fusing q, k, v."""
    out: dict[str, torch.Tensor] = {}
    pattern = re.compile(rf"^{re.escape(source)}\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in state.items():
        match = pattern.match(key)
        if not match:
            continue
        index, name, kind = match.groups()
        prefix = f"{target}.{index}"
        if name in _HF_BLOCK:
            out[f"{prefix}.{_HF_BLOCK[name]}.{kind}"] = value
        elif name == "attention.attention.query":
            attention = f"{source}.{index}.attention.attention"
            if kind == "weight":
                out[f"{prefix}.attn.qkv.weight"] = torch.cat(
                    [state[f"{attention}.{p}.weight"] for p in ("query", "key", "value")])
            else:
                query_bias = state[f"{attention}.query.bias"]
                out[f"{prefix}.attn.qkv.bias"] = torch.cat(
                    [query_bias, torch.zeros_like(query_bias), state[f"{attention}.value.bias"]])
    return out


def _convert_hf_encoder(state: dict[str, torch.Tensor], prefix: str = "videomae.") -> dict[str, torch.Tensor]:
    out = _convert_hf_blocks(state, f"{prefix}encoder.layer", "encoder.blocks")
    for kind in ("weight", "bias"):
        out[f"encoder.patch_embed.proj.{kind}"] = state[f"{prefix}embeddings.patch_embeddings.projection.{kind}"]
        if f"{prefix}layernorm.{kind}" in state:
            out[f"encoder.norm.{kind}"] = state[f"{prefix}layernorm.{kind}"]
    return out


def _hf_bias_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Files saved by transformers < 5 (the Hub's VideoMAE releases) name the biases q_bias and
    v_bias; transformers 5 renames them on loading to query.bias and value.bias, as here."""
    renamed = {}
    for key, value in state.items():
        for old, new in ((".attention.q_bias", ".attention.query.bias"), (".attention.v_bias", ".attention.value.bias")):
            key = key.replace(old, new) if key.endswith(old) else key
        renamed[key] = value
    return renamed


def convert_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `VideoMAEForPreTraining` state dict (as saved by `save_pretrained`, any transformers
    version) -> ours. The encoder and, where there, the decoder; other keys (a classifier's head)
    pass unchanged, so a caller can tell a fine-tuned model from a pre-trained one."""
    state = _hf_bias_names(state)
    converted = _convert_hf_encoder(state)
    converted.update(_convert_hf_blocks(state, "decoder.decoder_layers", "decoder.blocks"))
    converted.update({key: value for key, value in state.items()
                      if not key.startswith(("videomae.", "decoder.decoder_layers."))})
    return converted


def _copy_eps(target: nn.LayerNorm, source: nn.LayerNorm | None) -> None:
    if source is not None:
        target.eps = source.eps  # transformers keeps torch's 1e-5 on some norms; the reference uses 1e-6


def from_transformers(hf_model: nn.Module) -> VideoMAE | VideoClassifier:
    """Our model with the weights (and numerics) of a `VideoMAEForPreTraining` or
    `VideoMAEForVideoClassification` (mean pooling) from `transformers`."""
    config = config_from_transformers(hf_model.config)
    state = hf_model.state_dict()
    kind = type(hf_model).__name__
    if kind == "VideoMAEForPreTraining":
        model = VideoMAE(config, loss="mse" if hf_model.config.norm_pix_loss else "mse_raw",
                         final_norm=hf_model.videomae.layernorm is not None)
        converted = convert_transformers(state)
        _copy_eps(model.decoder.norm, hf_model.decoder.norm)
    elif kind == "VideoMAEForVideoClassification":
        if hf_model.fc_norm is None:
            raise ValueError("only mean-pooling classifiers (use_mean_pooling=True) are supported")
        model = VideoClassifier(config, num_classes=hf_model.config.num_labels)
        converted = _convert_hf_encoder(state)
        for ours, theirs in (("fc_norm", "fc_norm"), ("head", "classifier")):
            for p in ("weight", "bias"):
                converted[f"{ours}.{p}"] = state[f"{theirs}.{p}"]
        _copy_eps(model.fc_norm, hf_model.fc_norm)
    else:
        raise ValueError(f"cannot import a {kind}; expected VideoMAEForPreTraining or VideoMAEForVideoClassification")
    model.load_state_dict(converted)
    return model


def convert_official(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict in the official repository's layout (pre-training or fine-tuning) -> ours.

    Accepts the raw checkpoint ({"model": ...} or {"module": ...}) or its state dict."""
    state = checkpoint.get("model", checkpoint.get("module", checkpoint))
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError("not a VideoMAE checkpoint: expected a state dict, or one under 'model' or 'module'")
    state = {key.removeprefix("module."): value for key, value in state.items()}  # saved from a DDP wrapper
    out: dict[str, torch.Tensor] = {}
    finetune = not any(k.startswith("encoder.") for k in state)
    for key, value in state.items():
        if key.endswith("pos_embed"):
            continue  # fixed sin-cos tables are rebuilt, not loaded
        name = f"encoder.{key}" if finetune and key.startswith(("patch_embed.", "blocks.", "norm.")) else key
        if name.endswith("attn.q_bias"):
            base = name.removesuffix("q_bias")
            value_bias = state[key.removesuffix("q_bias") + "v_bias"]
            out[base + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), value_bias])
        elif not name.endswith("attn.v_bias"):
            out[name] = value
    return out


def to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our pre-training state dict -> `VideoMAEForPreTraining`'s, in the names of the Hub's
    releases (q_bias/v_bias), which transformers 4 and 5 both load. The k bias is left out: it
    adds the same number to every attention logit of a query, so changes no output."""
    out: dict[str, torch.Tensor] = {}
    theirs = {ours: hf for hf, ours in _HF_BLOCK.items()}
    pattern = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in state.items():
        match = pattern.match(key)
        if key.startswith("encoder.") and not match:
            name = key.removeprefix("encoder.").replace("patch_embed.proj", "embeddings.patch_embeddings.projection")
            out["videomae." + name.replace("norm.", "layernorm.")] = value
            continue
        if not match:
            out[key] = value
            continue
        part, index, name, kind = match.groups()
        prefix = f"videomae.encoder.layer.{index}" if part == "encoder" else f"decoder.decoder_layers.{index}"
        if name != "attn.qkv":
            out[f"{prefix}.{theirs[name]}.{kind}"] = value
        elif kind == "weight":
            for role, weight in zip(("query", "key", "value"), value.chunk(3)):
                out[f"{prefix}.attention.attention.{role}.weight"] = weight
        else:
            query_bias, _, value_bias = value.chunk(3)
            out[f"{prefix}.attention.attention.q_bias"] = query_bias
            out[f"{prefix}.attention.attention.v_bias"] = value_bias
    return out


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our pre-training state dict -> the official code's (q_bias/v_bias, no k bias), which its
    fine-tuning script reads (`--finetune`)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("attn.qkv.bias"):
            query_bias, _, value_bias = value.chunk(3)
            out[key.replace("qkv.bias", "q_bias")], out[key.replace("qkv.bias", "v_bias")] = query_bias, value_bias
        else:
            out[key] = value
    return out
