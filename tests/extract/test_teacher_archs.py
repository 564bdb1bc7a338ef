"""Hub teachers of pipelines.yaml whose architecture is declared build at the real dims (random weights).

The custom teachers (UniMed-CLIP, PMC-CLIP, MedCLIP) are covered in test_teacher_cli.py.
BiomedCLIP's architecture is declared in pipelines.yaml (model_config.model_cfg + text_config);
GenMedClip takes its whole config from the hub and cannot be built offline.
"""

from __future__ import annotations

import logging

import pytest
import torch

from mmkd.config import load_pipelines
from mmkd.teachers import teachers_from_config
from tests.conftest import REPO_ROOT

SPECS = teachers_from_config(load_pipelines(REPO_ROOT / "pipelines.yaml"))


@pytest.mark.parametrize("name", [
    "quiltnet",
    pytest.param("bmca_clip", marks=pytest.mark.slow),  # ViT-L/14: 428M parameters
])
def test_open_clip_teacher_builds_at_table_dim(name):
    import open_clip

    spec = SPECS[name]
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that no weights were loaded: intended
    model = open_clip.create_model(spec.arch).eval()
    size = spec.image_size or model.visual.image_size[0]
    with torch.inference_mode():
        img = model.encode_image(torch.zeros(1, 3, size, size))
        txt = model.encode_text(open_clip.get_tokenizer(spec.arch)(["a chest x-ray"]))
    assert img.shape == (1, spec.dim) and txt.shape == (1, spec.dim)
    assert model.context_length == spec.context_length


@pytest.mark.parametrize("name", ["plip", "pubmedclip"])
def test_transformers_teacher_builds_at_table_dim(name):
    from transformers import CLIPConfig, CLIPModel

    spec = SPECS[name]
    model = CLIPModel(CLIPConfig(**spec.model_config)).eval()
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=torch.zeros(1, 3, spec.image_size, spec.image_size))
        txt = model.get_text_features(input_ids=torch.ones(1, 8, dtype=torch.long))
    img = out if isinstance(out, torch.Tensor) else out.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    assert img.shape == (1, spec.dim) and txt.shape == (1, spec.dim)
    assert model.config.text_config.max_position_embeddings >= spec.context_length


@pytest.mark.slow  # 196M parameters initialised on CPU; --check builds it on the meta device in the default run
def test_biomedclip_builds_offline_at_table_dim(tmp_path, monkeypatch):
    from mmkd.teachers.archs import build_architecture

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    spec = SPECS["biomedclip"]
    model = build_architecture(spec, device="cpu").eval()
    assert type(model.text.transformer).__name__ == "BertModel" and model.text.transformer.pooler is None
    with torch.inference_mode():
        img = model.encode_image(torch.zeros(1, 3, spec.image_size, spec.image_size))
        ids = torch.tensor([[2, 1037, 3] + [0] * (spec.context_length - 3)])
        txt = model.encode_text(ids)
    assert img.shape == (1, spec.dim) and txt.shape == (1, spec.dim)
    assert model.context_length == 512 and spec.context_length == 256  # BERT positions vs tokenizer length
