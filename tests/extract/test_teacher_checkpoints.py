"""Checkpoint reading: transformers-4.x key names load under 5.x through transformers' own conversion table."""

from __future__ import annotations

import pytest
import torch

from mmkd.teachers import TeacherSpec, load_teacher
from mmkd.teachers.checkpoints import CheckpointError, read_state_dict
from mmkd.teachers.tiny import make_tiny_teachers

CAPTIONS = ["chest x ray", "brain mri axial view showing a lesion"]



def _v4_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """MedCLIP's state dict as a transformers-4.2x model saved it (old Swin names, persistent index buffers)."""
    revert = pytest.importorskip("transformers.core_model_loading").revert_weight_conversion
    swin = model.vision_model.model
    old = revert(swin, swin.state_dict())
    if old.keys() == swin.state_dict().keys():
        pytest.skip("this transformers version uses the 4.x Swin names itself: nothing to convert")
    out = {f"vision_model.model.{k}": v for k, v in old.items()}
    for name, buf in swin.named_buffers():
        if name.endswith("relative_position_index"):  # persistent in 4.x, recomputed in 5.x
            out[f"vision_model.model.{name.replace('relative_position_bias.', 'self.')}"] = buf
    out.update({k: v for k, v in model.state_dict().items() if not k.startswith("vision_model.model.")})
    return out


def test_medclip_v4_checkpoint_loads_and_embeds_identically(tmp_path):
    spec = make_tiny_teachers(tmp_path, kinds=("medclip",))["tiny_medclip"]
    reference = load_teacher(spec)
    sd = _v4_state_dict(reference.model)
    assert any(".attention.self.query." in k for k in sd) and not any(".q_proj." in k for k in sd)
    torch.save(sd, tmp_path / "pytorch_model.bin")  # MedCLIP's release layout: a plain state dict
    teacher = load_teacher(TeacherSpec.from_dict({**spec.to_dict(), "weights": str(tmp_path / "pytorch_model.bin")}))
    pixels = torch.rand(2, 1, 32, 32)
    assert torch.equal(teacher.encode_images(pixels), reference.encode_images(pixels))
    assert torch.equal(teacher.encode_texts(CAPTIONS), reference.encode_texts(CAPTIONS))


def test_read_state_dict_unwraps_training_containers(tmp_path):
    torch.save({"epoch": 3, "name": "run", "state_dict": {"module.a.weight": torch.ones(2)},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, tmp_path / "c.pt")
    assert list(read_state_dict(tmp_path / "c.pt")) == ["a.weight"]
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(tmp_path / "empty.pt", "t")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"teacher 't'.*bad\.safetensors.*truncated or corrupt"):
        read_state_dict(tmp_path / "bad.safetensors", "t")


def test_store_attrs_record_upstream_and_text_encoding(tmp_path):
    spec = make_tiny_teachers(tmp_path, kinds=("pmc_clip",))["tiny_pmc_clip"]
    upstream = {"repo": "WeixiongLin/PMC-CLIP", "file": "src/pmc_clip/model/pmc_clip.py",
                "function": "PMC_CLIP.encode_text"}
    attrs = load_teacher(TeacherSpec.from_dict({**spec.to_dict(), "upstream": upstream})).store_attrs()
    assert attrs["upstream"] == upstream
    assert attrs["text_encoding"] == {"max_tokens": 16, "padding": "max_length", "attention_mask": False,
                                      "clean": None}
