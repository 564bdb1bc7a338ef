"""``mmkd teachers --check``, upstream references in pipelines.yaml, MedCLIP's pad-to-square, UniMed's file names."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mmkd.cli import main
from mmkd.config import load_pipelines
from mmkd.teachers import TeacherError, TeacherSpec, load_teacher, teachers_from_config, weights_status
from mmkd.teachers.tiny import make_tiny_teachers, write_pipelines
from tests.conftest import REPO_ROOT

REPO_PIPELINES = REPO_ROOT / "pipelines.yaml"



def test_check_with_empty_cache_reports_three_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("MMKD_WEIGHTS", str(tmp_path / "no-weights"))
    out = CliRunner().invoke(main, ["teachers", "--check", "--json", "--pipeline", str(REPO_PIPELINES)])
    rows = {r["teacher"]: r for r in json.loads(out.output[out.output.index("["):])}
    assert len(rows) == 9
    # BiomedCLIP's architecture is declared in pipelines.yaml: it builds with nothing in the cache
    bio = rows["biomedclip"]
    assert bio["arch_ok"] and bio["arch_missing"] == "" and 190e6 < bio["params"] < 200e6
    assert "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract" in bio["tokenizer_missing"]
    assert "BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in bio["weights_missing"]
    assert all(rows[n]["arch_ok"] for n in rows if n != "genmedclip")
    assert rows["quiltnet"]["tokenizer_missing"] == ""  # open_clip's bundled BPE tokenizer
    assert "unimed-clip-vit-b16.pt" in rows["unimedclip"]["weights_missing"]  # either published name will do
    # GenMedClip's config exists only on the hub: reported as such, not a failure (nothing else is checkable offline)
    gen = rows["genmedclip"]
    assert not gen["arch_ok"] and gen["arch_on_hub"] and "not declared" in gen["arch_missing"]
    assert out.exit_code == 0
    table = CliRunner().invoke(main, ["teachers", "--check", "--pipeline", str(REPO_PIPELINES)])
    for part in ("architecture comes with the hub weights (not checkable offline) for 1 of 9", "tokenizer missing for",
                 "weights missing for 9 of 9"):
        assert part in table.output, table.output
    assert "architecture config missing" not in table.output and "from hub" in table.output


def test_check_console_exit_0_and_no_stray_warnings(tmp_path, run_mmkd):
    """The shipped registry through the console script from outside the repo: exit 0, no open_clip warning."""
    res = run_mmkd("teachers", "--check", "--pipeline", REPO_PIPELINES, cwd=tmp_path,
                   env={"HF_HUB_CACHE": str(tmp_path / "empty-hub"), "MMKD_WEIGHTS": str(tmp_path / "none")})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "genmedclip  open_clip     from hub" in res.stdout
    assert "No pretrained weights loaded" not in res.stderr and "WARNING" not in res.stderr, res.stderr[-2000:]


def test_check_tiny_teachers_all_present(tmp_path):
    specs = make_tiny_teachers(tmp_path / "w", kinds=("open_clip", "transformers", "custom"))
    for name, spec in list(specs.items()):  # transformers: declare the architecture as pipelines.yaml does
        if spec.loader == "transformers":
            cfg = json.loads((tmp_path / "w" / name / "config.json").read_text())
            keep = ("text_config", "vision_config", "projection_dim")
            specs[name] = TeacherSpec.from_dict({**spec.to_dict(), "model_config": {k: cfg[k] for k in keep}})
    out = CliRunner().invoke(main, ["teachers", "--check", "--json", "--pipeline",
                                    str(write_pipelines(tmp_path / "p.yaml", specs))])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output[out.output.index("["):])
    assert all(r["arch_ok"] and not r["tokenizer_missing"] and not r["weights_missing"] for r in rows), rows


def test_every_repo_teacher_names_its_upstream():
    specs = teachers_from_config(load_pipelines(REPO_PIPELINES))
    for name, spec in specs.items():
        assert all(spec.upstream.get(k) for k in ("repo", "file", "function")), name
    assert specs["pmc_clip"].upstream["repo"] == "WeixiongLin/PMC-CLIP"
    assert specs["medclip"].upstream["file"] == "medclip/modeling_medclip.py"


@pytest.mark.parametrize("upstream, match", [
    ("github.com/x", "upstream must be a mapping"),
    ({"repo": "a/b", "file": "f.py"}, r"missing \['function'\]"),
    ({"repo": "a/b", "file": "f.py", "function": "g", "url": "x"}, r"unknown keys \['url'\]"),
])
def test_bad_upstream_is_refused(upstream, match):
    with pytest.raises(TeacherError, match=match):
        teachers_from_config({"teachers": {"t": {"loader": "open_clip", "weights": "hf-hub:a/b",
                                                 "upstream": upstream}}})


def test_pad_square_never_upscales():
    from mmkd.teachers import Preprocessing

    pp = Preprocessing(image_size=32, mean=(0.0,), std=(1.0,), resize_mode="pad_square", grayscale=True)
    small = Image.new("L", (10, 20), 255)  # smaller than 32: pasted at its own size, centred
    out = pp.build()(small)[0].numpy()
    rows, cols = np.nonzero(out > 0.5)
    assert out.shape == (32, 32) and (rows.min(), rows.max(), cols.min(), cols.max()) == (6, 25, 11, 20)
    big = Image.new("L", (128, 64), 255)  # pad to 128x128 first, then resize to 32: a 32x16 band
    rows, cols = np.nonzero(pp.build()(big)[0].numpy() > 0.5)
    assert rows.max() - rows.min() + 1 in (16, 17) and cols.max() - cols.min() + 1 == 32


def test_unimed_checkpoint_found_under_either_name(tmp_path):
    spec = make_tiny_teachers(tmp_path, kinds=("unimed_clip",))["tiny_unimed_clip"]
    folder = tmp_path / "release"
    folder.mkdir()
    shutil.copy(spec.weights, folder / "unimed-clip-vit-b16.pt")  # the hub's name
    readme_named = TeacherSpec.from_dict({**spec.to_dict(), "weights": str(folder / "unimed_clip_vit_b16.pt")})
    assert weights_status(readme_named).available
    teacher = load_teacher(readme_named)
    reference = load_teacher(spec)
    assert torch.equal(teacher.encode_texts(["chest x ray"]), reference.encode_texts(["chest x ray"]))
    assert teacher.store_attrs()["weights_sha256"] == reference.store_attrs()["weights_sha256"]
    (folder / "unimed-clip-vit-b16.pt").unlink()
    status = weights_status(readme_named)
    assert not status.available and "unimed-clip-vit-b16.pt" in status.missing
