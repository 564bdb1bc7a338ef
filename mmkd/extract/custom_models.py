"""Architectures of the ``custom`` teachers, built from a config dict.

Each class is the real architecture, parameterised so that a tiny config builds a
tiny model; :func:`build_custom_model` makes one, :func:`load_custom_checkpoint`
loads a local checkpoint into it and fails loudly on missing or unexpected keys.

Every model exposes ``encode_image(pixels)``, ``encode_text(input_ids,
attention_mask)`` (unnormalised features) and a ``logit_scale`` parameter (log).

Config keys (``model_config`` in pipelines.yaml):

* ``unimed_clip`` (UniMed-CLIP, github.com/mbzuai-oryx/UniMed-CLIP): ``embed_dim``;
  ``vision`` = open_clip ``CLIPVisionCfg`` fields (ViT-B/16: ``image_size 224,
  patch_size 16, width 768, layers 12``), ``quick_gelu`` (true);
  ``text`` = ``bert`` (``transformers.BertConfig`` kwargs), ``proj`` (``mlp`` |
  ``linear``). Checkpoint keys: ``visual.*`` (open_clip VisionTransformer),
  ``text_encoder.transformer.*`` (BertModel, no pooler),
  ``text_encoder.proj.{0,2}.weight``, ``logit_scale``. Text = CLS of the last
  hidden state -> proj.
* ``pmc_clip`` (PMC-CLIP, github.com/WeixiongLin/PMC-CLIP): ``embed_dim`` (768);
  ``vision`` = ``layers`` [3,4,6,3], ``width`` 64, ``image_size`` 224, ``head_width``
  64 (open_clip ModifiedResNet); ``text`` = ``bert``. Checkpoint keys:
  ``visual.*`` (ModifiedResNet), ``text_encoder.*`` (BertModel with pooler),
  ``text_projection`` (width x embed_dim), ``logit_scale``; training-only keys
  (``fusion_module.*``, ``mlm_projection``, ``img_special_token``,
  ``positional_embedding``, ``ln_final.*``) are ignored. Text = CLS of the last
  hidden state @ text_projection.
* ``medclip`` (MedCLIP-ViT, github.com/RyanWangZf/MedCLIP): ``embed_dim`` (512);
  ``vision`` = ``swin`` (``transformers.SwinConfig`` kwargs; Swin-T by default);
  ``text`` = ``bert`` (Bio_ClinicalBERT). Checkpoint keys: ``vision_model.model.*``
  (SwinModel), ``vision_model.projection_head.weight``, ``text_model.model.*``
  (BertModel with pooler), ``text_model.projection_head.weight``, ``logit_scale``.
  Image: 1-channel input repeated to 3. Text: mean over tokens of hidden layers 1,
  2 and last, averaged, -> projection (masked mean over real tokens, i.e. what the
  original gives for one unpadded caption).

All: a leading ``module.`` is stripped, a ``state_dict`` wrapper unwrapped, buffers
named ``*position_ids`` ignored; ``ignore_keys`` (list of prefixes) in the config
adds more keys to ignore.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)


class CheckpointError(RuntimeError):
    """A checkpoint does not match the architecture it is loaded into."""


def _bert(cfg: dict[str, Any], add_pooling_layer: bool) -> nn.Module:
    from transformers import BertConfig, BertModel

    conf = BertConfig(**{**BERT_BASE, **(cfg or {})})
    return BertModel(conf, add_pooling_layer=add_pooling_layer)


def _proj(kind: str, d_in: int, d_out: int) -> nn.Module:
    if kind == "mlp":  # open_clip HFTextEncoder 'mlp' projection
        hidden = (d_in + d_out) // 2
        return nn.Sequential(nn.Linear(d_in, hidden, bias=False), nn.GELU(), nn.Linear(hidden, d_out, bias=False))
    if kind == "linear":
        return nn.Linear(d_in, d_out, bias=False)
    raise ValueError(f"text projection {kind!r} not in ['mlp', 'linear']")


class _UniMedText(nn.Module):
    def __init__(self, bert: dict, embed_dim: int, proj: str) -> None:
        super().__init__()
        self.transformer = _bert(bert, add_pooling_layer=False)
        self.proj = _proj(proj, self.transformer.config.hidden_size, embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        return self.proj(out.last_hidden_state[:, 0])


class UniMedCLIP(nn.Module):
    """UniMed-CLIP: open_clip ViT (QuickGELU) image tower + BiomedBERT text tower with MLP projection."""

    def __init__(self, embed_dim: int = 512, vision: dict | None = None, text: dict | None = None,
                 quick_gelu: bool = True) -> None:
        super().__init__()
        from open_clip.model import _build_vision_tower

        vision = {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12, **(vision or {})}
        text = text or {}
        self.visual = _build_vision_tower(embed_dim, vision, quick_gelu=quick_gelu)
        self.text_encoder = _UniMedText(text.get("bert", {}), embed_dim, text.get("proj", "mlp"))
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, attention_mask)


class PMCCLIP(nn.Module):
    """PMC-CLIP: ResNet-50 (CLIP ModifiedResNet, attention pool) + PubMedBERT, 768-d."""

    def __init__(self, embed_dim: int = 768, vision: dict | None = None, text: dict | None = None) -> None:
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet

        v = {"layers": [3, 4, 6, 3], "width": 64, "image_size": 224, "head_width": 64, **(vision or {})}
        self.visual = ModifiedResNet(layers=v["layers"], output_dim=embed_dim, heads=v["width"] * 32 // v["head_width"],
                                     image_size=v["image_size"], width=v["width"])
        self.text_encoder = _bert((text or {}).get("bert", {}), add_pooling_layer=True)
        width = self.text_encoder.config.hidden_size
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state[:, 0] @ self.text_projection


class _Projected(nn.Module):
    def __init__(self, model: nn.Module, d_in: int, d_out: int) -> None:
        super().__init__()
        self.model = model
        self.projection_head = nn.Linear(d_in, d_out, bias=False)


class MedCLIP(nn.Module):
    """MedCLIP-ViT: HF Swin-T image encoder (grayscale input) + Bio_ClinicalBERT, 512-d."""

    def __init__(self, embed_dim: int = 512, vision: dict | None = None, text: dict | None = None) -> None:
        super().__init__()
        from transformers import SwinConfig, SwinModel

        swin = SwinModel(SwinConfig(**(vision or {}).get("swin", {})))
        bert = _bert((text or {}).get("bert", {"vocab_size": 28996}), add_pooling_layer=True)
        self.vision_model = _Projected(swin, swin.num_features, embed_dim)
        self.text_model = _Projected(bert, bert.config.hidden_size, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[1] == 1:
            pixels = pixels.repeat(1, 3, 1, 1)
        pooled = self.vision_model.model(pixel_values=pixels).pooler_output
        return self.vision_model.projection_head(pooled)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.text_model.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hs = out.hidden_states
        mask = attention_mask.unsqueeze(-1).to(hs[-1].dtype)
        layers = torch.stack([hs[1], hs[2], hs[-1]])  # (3, B, L, D)
        pooled = (layers * mask).sum(2) / mask.sum(1).clamp(min=1)
        return self.text_model.projection_head(pooled.mean(0))


CUSTOM_ARCHS: dict[str, type[nn.Module]] = {"unimed_clip": UniMedCLIP, "pmc_clip": PMCCLIP, "medclip": MedCLIP}
_IGNORED = {"pmc_clip": ("fusion_module.", "mlm_projection", "img_special_token", "positional_embedding",
                         "ln_final.", "softmax.")}
_CONFIG_KEYS = ("embed_dim", "vision", "text", "quick_gelu", "ignore_keys")


def build_custom_model(arch: str, config: dict[str, Any]) -> nn.Module:
    """Build a custom architecture (random weights) from its config.

    Raises:
        KeyError: ``arch`` is unknown (message lists the valid ones).
        ValueError: the config has unknown keys.
    """
    if arch not in CUSTOM_ARCHS:
        raise KeyError(f"unknown custom architecture {arch!r}; valid: {sorted(CUSTOM_ARCHS)}")
    unknown = sorted(set(config) - set(_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"custom architecture {arch!r}: unknown model_config keys {unknown}; valid: {list(_CONFIG_KEYS)}")
    kwargs = {k: v for k, v in config.items() if k != "ignore_keys"}
    if "quick_gelu" in kwargs and arch != "unimed_clip":
        raise ValueError(f"custom architecture {arch!r} has no quick_gelu option")
    return CUSTOM_ARCHS[arch](**kwargs)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (``.safetensors`` or a ``torch.save`` file, weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds {type(sd).__name__}, not a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_custom_checkpoint(model: nn.Module, arch: str, path: str | Path, config: dict[str, Any]) -> None:
    """Load ``path`` into ``model`` strictly (ignoring the documented training-only keys).

    Raises:
        CheckpointError: keys are missing, unexpected or of the wrong shape; the
            message lists them and says which architecture and config were expected.
    """
    sd = read_state_dict(path)
    ignore = tuple(_IGNORED.get(arch, ())) + tuple(config.get("ignore_keys", ()))
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore) and not k.endswith("position_ids")}
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match custom architecture {arch!r} with this model_config: "
            f"{len(missing)} missing keys {missing[:8]}, {len(unexpected)} unexpected keys {unexpected[:8]}, "
            f"{len(shapes)} shape mismatches {shapes[:4]}. Check the teacher's model_config (dims, layers) "
            "against the checkpoint, or list training-only prefixes under model_config.ignore_keys; "
            f"the expected key layout is documented in {__name__}.")
    model.load_state_dict(sd, strict=False)  # strictness checked above (position_ids buffers excepted)
