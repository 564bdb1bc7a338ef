"""Pretrained initialisation: non-strict per-tower loading, the report, refusals, pretrained references.

Sources are tiny open_clip models saved as real checkpoints; pretrained references
resolve through a Hugging Face cache laid out in a temp folder (offline).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmkd.distill.init import InitConfig, InitError, initialise
from mmkd.distill.student import build_model, build_student, resolve_student
from tests.distill.conftest import TINY_STUDENT

REPO = Path(__file__).resolve().parents[2]
MMKD = Path(sys.executable).parent / "mmkd"
METACLIP_REPO = "timm/vit_base_patch16_clip_224.metaclip_400m"  # where open_clip looks for metaclip_400m


def _model(text_width: int = 32, vision_width: int = 32) -> torch.nn.Module:
    cfg = copy.deepcopy(TINY_STUDENT)
    cfg["text_cfg"]["width"] = text_width
    cfg["vision_cfg"]["width"] = vision_width
    torch.manual_seed(text_width * 100 + vision_width)
    return build_model(resolve_student(cfg))


def _save_open_clip(model: torch.nn.Module, path: Path) -> Path:
    """The container open_clip's training code writes (``{"state_dict": ...}`` with DDP ``module.`` prefixes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def _hf_cache(root: Path, repo: str, model: torch.nn.Module) -> Path:
    """A Hugging Face hub cache holding ``repo``'s open_clip weights, as hf_hub_download lays it out."""
    base = root / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0" * 40)
    torch.save(model.state_dict(), snap / "open_clip_pytorch_model.bin")
    return root


def _env(**kw: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **kw)
    env.pop("WORLD_SIZE", None)
    return env


def _distill(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(MMKD), "distill", *args], capture_output=True, text=True, env=env, timeout=300)


def _flags(store: Path, student: Path, out: Path, *extra: str) -> list[str]:
    return ["--store", str(store), "--student", str(student), "--out", str(out), "--stage", "1", "--steps", "1",
            "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--no-progress", *extra]


def test_image_tower_matches_text_does_not(tmp_path):
    src = _model(text_width=48)  # same image tower, wider text tower
    ckpt = _save_open_clip(src, tmp_path / "other.pt")
    student = _model()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(InitError, match=r"text tower from .*0\.0% of its parameters loaded.*--init-partial"):
        initialise(student, InitConfig(source=str(ckpt)))
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # refused: untouched
    report = initialise(student, InitConfig(source=str(ckpt), partial=True))
    img, txt = report["towers"]["image"], report["towers"]["text"]
    assert img["share"] == 1.0 and img["missing"] == [] and img["mismatched"] == []
    assert txt["loaded"] == 0 and txt["mismatched"] and txt["share"] == 0.0
    assert {"key": "token_embedding.weight", "checkpoint": [49408, 48], "model": [49408, 32]} in txt["mismatched"]
    state = student.state_dict()
    for k, v in src.state_dict().items():
        if k.startswith("visual.") or k == "logit_scale":
            assert torch.equal(state[k], v), k
        else:
            assert torch.equal(state[k], before[k]), k
    # the image tower alone from that checkpoint needs no --init-partial
    report = initialise(_model(), InitConfig(image=str(ckpt)))
    assert list(report["towers"]) == ["image"] and report["towers"]["image"]["share"] == 1.0


def test_per_tower_sources_and_stage1_run_layouts(tmp_path):
    a, b = _model(), _model(text_width=32, vision_width=32)
    torch.manual_seed(7)
    b = build_model(resolve_student(TINY_STUDENT))
    _save_open_clip(a, tmp_path / "a" / "epoch_1.pt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"step": 3, "student": b.state_dict()}, tmp_path / "run" / "checkpoints" / "last.pt")
    student = _model()
    report = initialise(student, InitConfig(image=str(tmp_path / "a"), text=str(tmp_path / "run")))
    assert report["towers"]["image"]["resolved"].endswith("epoch_1.pt")
    assert report["towers"]["text"]["resolved"].endswith("last.pt")
    state = student.state_dict()
    assert torch.equal(state["visual.conv1.weight"], a.state_dict()["visual.conv1.weight"])
    assert torch.equal(state["token_embedding.weight"], b.state_dict()["token_embedding.weight"])


def test_nothing_matching_is_refused_through_the_cli(tiny_store, student_json, tmp_path):
    ckpt = _save_open_clip(_model(text_width=48, vision_width=48), tmp_path / "alien.pt")
    out = tmp_path / "o"
    res = _distill(_flags(tiny_store, student_json, out, "--init", str(ckpt), "--init-partial"), _env())
    assert res.returncode != 0
    assert "init refused: nothing in" in res.stderr and "alien.pt" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


@pytest.mark.parametrize("spec, message", [
    ("runs/absent", "no such file or folder, and not a pretrained reference"),
    ("ViT-B-16-quickgelu:no_such_tag", "knows no pretrained tag 'no_such_tag'.*metaclip_400m"),
    ("NotAnArch:openai", "'NotAnArch' is not an open_clip architecture"),
    ("ViT-B-16-quickgelu:metaclip_400m", "not in the cache.*HF_HUB_OFFLINE"),
    ("hf-hub:someone/absent", "no open_clip weights for 'someone/absent' in the Hugging Face cache"),
])
def test_bad_init_sources_one_clear_error(tiny_store, student_json, tmp_path, spec, message):
    import re

    out = tmp_path / "o"
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    res = _distill(_flags(tiny_store, student_json, out, "--init", spec),
                   _env(HF_HUB_CACHE=str(empty), HF_HOME=str(tmp_path / "hf")))
    assert res.returncode != 0 and re.search(message, res.stderr), res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_pretrained_tag_and_hf_hub_resolve_through_a_local_cache(tiny_store, student_json, tmp_path):
    """The paper's own spec string, served offline from an HF cache that holds (tiny) weights under its name."""
    src = _model()
    cache = _hf_cache(tmp_path / "hub", METACLIP_REPO, src)
    other = tmp_path / "hub2"
    _hf_cache(other, "mmkd-test/tiny-clip", src)
    out = tmp_path / "o"
    res = _distill(_flags(tiny_store, student_json, out, "--init", "ViT-B-16-quickgelu:metaclip_400m", "--steps", "1",
                          "--lr", "1e-12", "--warmup-steps", "0"), _env(HF_HUB_CACHE=str(cache)))
    assert res.returncode == 0, res.stderr
    assert "init image tower <- ViT-B-16-quickgelu:metaclip_400m: 100.0% of parameters" in res.stderr
    report = json.loads((out / "init_report.json").read_text())
    assert METACLIP_REPO.replace("/", "--") in report["towers"]["image"]["resolved"]
    assert report["towers"]["text"]["share"] == 1.0
    student = build_student(resolve_student(TINY_STUDENT)).model
    report = initialise(student, InitConfig(source="hf-hub:mmkd-test/tiny-clip", cache_dir=str(other)))
    assert report["towers"]["image"]["share"] == 1.0
    assert torch.equal(student.state_dict()["visual.proj"], src.state_dict()["visual.proj"])


def test_hf_text_tower_from_save_pretrained_folder(tmp_path):
    """``text: hf`` (or ``hf_model_pretrained: true``) loads the HF model's own weights from a local folder."""
    from transformers import BertConfig, BertModel

    from mmkd.distill.student import init_config
    from mmkd.teachers import tiny

    bert = tmp_path / "bert"
    tiny.save_tiny_tokenizer(bert, 16)
    torch.manual_seed(3)
    pretrained = BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64))
    pretrained.save_pretrained(bert)
    cfg = {"embed_dim": 32, "quick_gelu": True, "vision_cfg": TINY_STUDENT["vision_cfg"],
           "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "mlp",
                        "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16,
                        "hf_model_pretrained": True}}
    spec = resolve_student(cfg)
    student = build_student(spec).model
    init = init_config(InitConfig(), spec)
    assert init.text == "hf"
    report = initialise(student, init)
    txt = report["towers"]["text"]
    # the MLP projection is the student's own: the share counts the HF transformer only
    assert txt["share"] == 1.0 and txt["resolved"] == str(bert) and txt["missing"] == []
    for k, v in pretrained.state_dict().items():
        if k.startswith("pooler."):  # open_clip's cls pooler builds BERT without its pooler layer
            continue
        assert torch.equal(student.state_dict()[f"text.transformer.{k}"], v), k
    # an init source for the text tower (a stage-1 run) takes precedence over hf_model_pretrained
    assert init_config(InitConfig(source="runs/s1"), spec).text is None
    with pytest.raises(InitError, match="no pretrained weights for"):
        initialise(build_student(spec).model, InitConfig(text=f"hf:{tmp_path / 'absent'}"))


def test_init_in_an_entry_and_flags(tmp_path):
    """``init:`` as a string or mapping in an entry; paths resolve against the entry's file, references stay."""
    from mmkd.config import load_pipelines
    from mmkd.distill.config import load_distill_config

    user = tmp_path / "conf" / "pipelines.yaml"
    user.parent.mkdir()
    user.write_text("distill:\n"
                    "  s1:\n    store: st\n    student: tiny_student\n    out: o\n    steps: 1\n"
                    "    init: {image: 'ViT-B-16-quickgelu:metaclip_400m', text: ckpt/text.pt, min_share: 0.5}\n"
                    "  s2:\n    store: st\n    student: tiny_student\n    out: o\n    steps: 1\n    init: runs/s1\n")
    cfg = load_pipelines(user)
    s1 = load_distill_config(cfg, "s1", {})
    assert s1.init.image == "ViT-B-16-quickgelu:metaclip_400m" and s1.init.min_share == 0.5
    assert s1.init.text == str(user.parent / "ckpt" / "text.pt") and s1.init.source is None
    s2 = load_distill_config(cfg, "s2", {"init_text": "hf", "init_partial": True})
    assert s2.init.source == str(user.parent / "runs" / "s1")
    assert s2.init.sources() == {"image": s2.init.source, "text": "hf"} and s2.init.partial is True
    flag = load_distill_config(cfg, "s2", {"init": "runs/other"})
    assert flag.init.source == "runs/other"  # a flag's path is the user's, relative to the working directory
    assert load_distill_config(cfg, "s2", {}).to_dict()["init"]["source"] == str(user.parent / "runs" / "s1")
