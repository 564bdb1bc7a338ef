"""The open_clip and transformers teachers against their own libraries' inference paths.

Reduced-dims local checkpoints; the reference is what a user of the library gets
(open_clip ``create_model_from_pretrained`` + its transform and tokenizer; transformers
``CLIPModel.get_image_features`` / ``get_text_features`` + ``CLIPImageProcessor`` and
the tokenizer), the candidate is mmkd's loader. Both run float32 on CPU; the same
arithmetic in a different summation order stays within cosine 1e-6 on any x86 CPU, so
0.99999 is the gate (real mistakes, e.g. a wrong pooler or mean, are below 0.99).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mmkd.teachers import TeacherSpec, load_teacher, teachers_from_config
from mmkd.teachers.parity import cosines, run_parity
from mmkd.teachers.tiny import make_tiny_teachers, save_tiny_tokenizer

COS = 0.99999
CAPTIONS = ["chest x ray showing a mass in the right lung", "brain mri axial view",
            "h e stained tissue with arrows " * 12, "fundus"]



def _images(folder: Path) -> list[str]:
    """Odd sizes, RGB and grayscale, saved as PNG (relative names, as reference.npz lists them)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (h, w, mode) in enumerate([(40, 70, "RGB"), (97, 33, "L"), (64, 64, "RGB"), (21, 150, "L")]):
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"im{i}.png")
        names.append(f"images/im{i}.png")
    return names


def _write_reference(folder: Path, rels: list[str], pixels: torch.Tensor, image: torch.Tensor,
                     text: torch.Tensor) -> None:
    ids = [Path(r).stem for r in rels]
    np.savez(folder / "reference.npz", ids=np.array(ids), image_paths=np.array(rels), captions=np.array(CAPTIONS),
             image=image.detach().numpy(), text=text.detach().numpy(), **{f"pixels_{ids[0]}": pixels[0].numpy()})


def _parity(tmp_path: Path, name: str, spec: TeacherSpec, pixel_tol: float = 1e-4):
    (tmp_path / "pipelines.yaml").write_text(yaml.safe_dump({"teachers": {name: {
        k: v for k, v in spec.to_dict().items() if k in ("loader", "weights")}}}))
    from mmkd.config import load_pipelines

    (result,) = run_parity(tmp_path / "parity", teachers_from_config(load_pipelines(tmp_path / "pipelines.yaml")))
    assert result.error is None and result.passed, result
    assert min(result.image_cos_min, result.text_cos_min, result.upstream_pixels_cos_min) >= COS, result
    assert result.pixel_max_diff <= pixel_tol, result
    return result


def test_open_clip_teacher_matches_create_model_from_pretrained(tmp_path):
    import open_clip
    from PIL import Image

    spec = make_tiny_teachers(tmp_path / "w", kinds=("open_clip",), image_size=64)["tiny_open_clip"]
    folder = tmp_path / "parity" / "tiny_open_clip"
    folder.mkdir(parents=True)
    (folder / "checkpoint").symlink_to(Path(spec.weights.removeprefix("local-dir:")))
    rels = _images(tmp_path / "images")
    model, preprocess = open_clip.create_model_from_pretrained(spec.weights)  # upstream's own inference path
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.weights)
    with torch.inference_mode():
        pixels = torch.stack([preprocess(Image.open(tmp_path / r)) for r in rels])
        _write_reference(folder, rels, pixels, model.encode_image(pixels), model.encode_text(tokenizer(CAPTIONS)))
    _parity(tmp_path, "tiny_open_clip", spec)


def test_transformers_teacher_matches_clipmodel(tmp_path):
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    spec = make_tiny_teachers(tmp_path / "w", kinds=("transformers",), image_size=64,
                              context_length=32)["tiny_transformers"]
    folder = tmp_path / "parity" / "tiny_transformers"
    folder.mkdir(parents=True)
    (folder / "checkpoint").symlink_to(Path(spec.weights))
    rels = _images(tmp_path / "images")
    model = CLIPModel.from_pretrained(spec.weights).eval()
    processor = CLIPImageProcessor.from_pretrained(spec.weights)
    tokens = AutoTokenizer.from_pretrained(spec.weights)(CAPTIONS, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        pixels = processor(images=[Image.open(tmp_path / r).convert("RGB") for r in rels],
                           return_tensors="pt")["pixel_values"]
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(**tokens)
    img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))
    _write_reference(folder, rels, pixels, img, txt)
    # transformers 5's CLIPImageProcessor resizes in float (torchvision backend), mmkd in 8-bit PIL: pixels
    # differ by rounding, at most a few 1/255 steps (/ std 0.26 after normalising); embeddings still agree
    _parity(tmp_path, "tiny_transformers", spec, pixel_tol=0.05)


def _fake_hub_file(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """The layout huggingface_hub's cache lookup reads: refs/main -> snapshots/<commit>/<file>."""
    commit = "0" * 40
    snap = cache / ("models--" + repo.replace("/", "--")) / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(commit)
    for name, src in files.items():
        (snap / name).write_bytes(src.read_bytes())


def test_declared_biomedclip_architecture_matches_open_clip(tmp_path, monkeypatch):
    """BiomedCLIP's shape (timm ViT, HF BERT text tower, MLP proj, CLS pooler) at reduced dims.

    Upstream: open_clip builds it from the config files. mmkd: from the architecture declared in
    the spec, with only the weights and the tokenizer in the (fake, offline) hub cache.
    """
    import open_clip
    from transformers import BertConfig

    bert = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64)
    tok_dir = save_tiny_tokenizer(tmp_path / "tok", context_length=64)
    bert["vocab_size"] = len(json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"])
    BertConfig(**bert).save_pretrained(tmp_path / "bert")
    model_cfg = {"embed_dim": 24,
                 "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                                "timm_proj": "linear", "image_size": 160},
                 "text_cfg": {"hf_model_name": str(tmp_path / "bert"), "hf_tokenizer_name": str(tok_dir),
                              "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                              "context_length": 64}}
    upstream_dir = tmp_path / "upstream"
    upstream_dir.mkdir()
    (upstream_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    for f in tok_dir.iterdir():  # open_clip reads a local-dir model's HF tokenizer from that folder
        (upstream_dir / f.name).write_bytes(f.read_bytes())
    torch.manual_seed(0)
    built = open_clip.create_model(f"local-dir:{upstream_dir}", pretrained_text=False)
    torch.save(built.state_dict(), upstream_dir / "open_clip_pytorch_model.bin")
    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{upstream_dir}")
    model.eval()  # open_clip returns train mode (its README calls eval()); BERT has dropout
    tokenizer = open_clip.get_tokenizer(f"local-dir:{upstream_dir}")

    cache = tmp_path / "hub"
    _fake_hub_file(cache, "org/tiny-biomedclip", {"open_clip_pytorch_model.bin":
                                                  upstream_dir / "open_clip_pytorch_model.bin"})
    # a downloaded tokenizer repo: tokenizer files and the repo's config.json (AutoTokenizer reads it)
    _fake_hub_file(cache, "org/tiny-bert-tokenizer", {**{p.name: p for p in tok_dir.iterdir()},
                                                      "config.json": tmp_path / "bert" / "config.json"})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    declared = json.loads(json.dumps(model_cfg))
    declared["text_cfg"].update(hf_model_name="org/tiny-bert-not-cached", hf_tokenizer_name="org/tiny-bert-tokenizer")
    spec = TeacherSpec(name="tiny_biomedclip", loader="open_clip", weights="hf-hub:org/tiny-biomedclip", dim=24,
                       image_size=160, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD,
                       interpolation="bicubic", context_length=64,
                       model_config={"model_cfg": declared, "text_config": {"model_type": "bert", **bert}})
    teacher = load_teacher(spec)

    from PIL import Image

    rels = _images(tmp_path / "images")
    with torch.inference_mode():
        ref_img = model.encode_image(torch.stack([preprocess(Image.open(tmp_path / r)) for r in rels]))
        ref_txt = model.encode_text(tokenizer(CAPTIONS))
        img = teacher.encode_images(torch.stack([teacher.preprocess(Image.open(tmp_path / r)) for r in rels]))
        txt = teacher.encode_texts(CAPTIONS)
    assert cosines(img.numpy(), ref_img.numpy()).min() >= COS
    assert cosines(txt.numpy(), ref_txt.numpy()).min() >= COS
    assert teacher.store_attrs()["revision"] == "0" * 40
