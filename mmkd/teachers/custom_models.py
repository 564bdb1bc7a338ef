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
  hidden state @ text_projection, computed as upstream does it: input padded to the
  context length (77) and **no attention mask**, so [CLS] attends to the padding.
* ``medclip`` (MedCLIP-ViT, github.com/RyanWangZf/MedCLIP): ``embed_dim`` (512);
  ``vision`` = ``swin`` (``transformers.SwinConfig`` kwargs; Swin-T by default);
  ``text`` = ``bert`` (Bio_ClinicalBERT). Checkpoint keys: ``vision_model.model.*``
  (SwinModel), ``vision_model.projection_head.weight``, ``text_model.model.*``
  (BertModel with pooler), ``text_model.projection_head.weight``, ``logit_scale``.
  Image: 1-channel input repeated to 3. Text: mean over tokens of hidden layers 1,
  2 and last, averaged, -> projection (masked mean over real tokens, i.e. what the
  original gives for one unpadded caption). Checkpoints saved under transformers
  4.x (``attention.self.query``...) load under 5.x through transformers' own key
  conversion (:func:`mmkd.teachers.checkpoints.convert_hf_keys`).

All: a leading ``module.`` is stripped, a ``state_dict`` wrapper unwrapped, buffers
named ``*position_ids`` ignored; ``ignore_keys`` (list of prefixes) in the config
adds more keys to ignore. Checkpoints are read tensors-only (pickled objects refused).

Text-side quirks of each upstream tokenizer call are class attributes read by the
loader: ``clean_text`` (a caption cleaner or None), ``pad_to_context`` (pad every caption to the context
length, for models that attend to padding; otherwise pad to the longest in the batch)
and ``uses_attention_mask`` (False when ``encode_text`` ignores the mask, as PMC-CLIP's
upstream does); the loader records them in the store as ``text_encoding``.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from mmkd.jsontypes import JSONDict
from mmkd.teachers.checkpoints import CheckpointError, convert_hf_keys, match_state_dict, read_state_dict

log = logging.getLogger(__name__)

BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)


__all__ = ["CUSTOM_ARCHS", "CheckpointError", "MedCLIP", "PMCCLIP", "UniMedCLIP", "build_custom_model",
           "load_custom_checkpoint", "read_state_dict", "unimed_clean_text"]


def unimed_clean_text(text: str) -> str:
    """UniMed-CLIP's caption cleaning, applied by its ``HFTokenizer`` before tokenizing.

    Verbatim from mbzuai-oryx/UniMed-CLIP ``src/open_clip/tokenizer.py``
    (``_clean_whitespace`` = ``whitespace_clean(basic_clean(x))``): ftfy ``fix_text``
    (curly quotes become straight ones...), HTML unescaped twice, whitespace collapsed.
    """
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def _bert(cfg: JSONDict, add_pooling_layer: bool) -> nn.Module:
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

    clean_text: Callable[[str], str] | None = staticmethod(unimed_clean_text)
    pad_to_context = True  # HFTokenizer pads to max_length (256); the mask (ids != pad) is passed

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

    clean_text: Callable[[str], str] | None = None
    pad_to_context = True  # no attention mask upstream: the padding length changes the result
    uses_attention_mask = False

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

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # Upstream quirk, reproduced on purpose: WeixiongLin/PMC-CLIP src/pmc_clip/model/pmc_clip.py,
        # PMC_CLIP.encode_text, tokenizes with padding='max_length' (77) and calls the text encoder
        # WITHOUT attention_mask, so [CLS] attends to the [PAD] tokens. The released model was trained and
        # evaluated that way (and the official stored features computed so): attention_mask is ignored here.
        # Upstream then takes the hidden state where input_ids == cls_id (2, hard-coded): position 0.
        del attention_mask
        out = self.text_encoder(input_ids=input_ids)
        return out.last_hidden_state[:, 0] @ self.text_projection


class _Projected(nn.Module):
    def __init__(self, model: nn.Module, d_in: int, d_out: int) -> None:
        super().__init__()
        self.model = model
        self.projection_head = nn.Linear(d_in, d_out, bias=False)


class MedCLIP(nn.Module):
    """MedCLIP-ViT: HF Swin-T image encoder (grayscale input) + Bio_ClinicalBERT, 512-d."""

    clean_text: Callable[[str], str] | None = None
    # Padding to the longest in the batch is safe: the pooling below masks the padding.
    pad_to_context = False

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
        # RyanWangZf/MedCLIP medclip/modeling_medclip.py, MedCLIPTextModel.forward, averages over ALL positions,
        # [PAD] included, so in a padded batch a caption's embedding depends on the longest caption beside it.
        # A stored feature must not depend on its batch: this is upstream's value for the caption encoded alone
        # (no padding), which the masked mean gives exactly.
        mask = attention_mask.unsqueeze(-1).to(hs[-1].dtype)
        layers = torch.stack([hs[1], hs[2], hs[-1]])  # (3, B, L, D)
        pooled = (layers * mask).sum(2) / mask.sum(1).clamp(min=1)
        return self.text_model.projection_head(pooled.mean(0))


CUSTOM_ARCHS: dict[str, type[nn.Module]] = {"unimed_clip": UniMedCLIP, "pmc_clip": PMCCLIP, "medclip": MedCLIP}
_IGNORED = {"pmc_clip": ("fusion_module.", "mlm_projection", "img_special_token", "positional_embedding",
                         "ln_final.", "softmax.")}
_CONFIG_KEYS = ("embed_dim", "vision", "text", "quick_gelu", "ignore_keys")


def build_custom_model(arch: str, config: JSONDict) -> nn.Module:
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


def load_custom_checkpoint(model: nn.Module, arch: str, path: str | Path, config: JSONDict,
                           teacher: str | None = None) -> None:
    """Load ``path`` into ``model`` strictly (ignoring the documented training-only keys).

    Keys of Hugging Face sub-models are first converted with transformers' own table, so
    a checkpoint saved under transformers 4.x loads under 5.x.

    Raises:
        CheckpointError: the file is unreadable or holds pickled objects, or keys are
            missing, unexpected or of the wrong shape; the message names the teacher, the
            file and the first mismatching key.
    """
    sd = read_state_dict(path, teacher)
    ignore = tuple(_IGNORED.get(arch, ())) + tuple(config.get("ignore_keys", ()))
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore)}
    sd, _ = convert_hf_keys(model, sd)
    match_state_dict(model, sd, path=path, arch=arch, teacher=teacher)
