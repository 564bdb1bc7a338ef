"""``--decode gpu``: the device decode path, run here on the CPU device (the same functions nvJPEG runs on a GPU)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from mmkd.data.images import decode_image
from mmkd.extract.device_decode import decode_batch, device_decodable
from mmkd.teachers.base import Preprocessing

# Tolerance: another JPEG decoder (libjpeg-turbo via torchvision vs Pillow's) and torch's antialiased resize vs
# PIL's differ by a few 8-bit levels at edges; in normalised units (std ~0.27) that is < 0.35 at any pixel, and the
# images stay near-identical as a whole (cosine > 0.995).
MAX_ABS, MIN_COS = 0.35, 0.995


def _pp(fit: str, grey: bool = False) -> Preprocessing:
    mean, std = ((0.5,), (0.27,)) if grey else ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    return Preprocessing(64, mean, std, resize_mode=fit, grayscale=grey)


@pytest.mark.parametrize("fit", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("grey", [False, True])
def test_device_path_matches_the_pil_path_on_real_jpegs(fit, grey, modality_dir):
    jpegs = [p.read_bytes() for p in sorted(modality_dir.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg")]
    pp = _pp(fit, grey)
    ok = [d for d in jpegs if device_decodable(d, pp)]
    assert len(ok) >= 4
    on_device = decode_batch(ok, pp, "cpu")
    ref = [pp.build()(decode_image(d, mode=pp.mode)) for d in ok]
    for a, b in zip(on_device, ref):
        assert a is not None and a.shape == b.shape == (1 if grey else 3, 64, 64)
        assert (a - b).abs().max() < MAX_ABS
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > MIN_COS


def _jpeg(**save) -> bytes:
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    img = img.convert(save.pop("mode", "RGB"))
    buf = io.BytesIO()
    img.save(buf, format=save.pop("format", "JPEG"), **save)
    return buf.getvalue()


@pytest.mark.parametrize("data, why", [
    (_jpeg(format="PNG"), "png"),
    (_jpeg(progressive=True), "progressive"),
    (_jpeg(mode="CMYK"), "cmyk"),
    (b"\xff\xd8\xff\xe0garbage", "corrupt header"),
])
def test_what_the_device_path_leaves_to_the_cpu(data, why):
    assert not device_decodable(data, _pp("shortest")), why


def test_pad_square_teachers_stay_on_the_cpu_path():
    assert device_decodable(_jpeg(), _pp("shortest")) and not device_decodable(_jpeg(), _pp("pad_square"))


def test_undecodable_jpeg_in_a_batch_comes_back_none_not_an_exception():
    good = _jpeg()
    bad = good[:200] + b"\x00" * 50 + good[-2:]  # header intact, entropy data destroyed
    out = decode_batch([good, bad, good], _pp("shortest"), "cpu")
    assert out[0] is not None and out[2] is not None


@pytest.mark.gpu
def test_cuda_decode_matches_the_cpu_device_path(modality_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    jpegs = [p.read_bytes() for p in sorted(modality_dir.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg")]
    pp = _pp("shortest")
    ok = [d for d in jpegs if device_decodable(d, pp)]
    for a, b in zip(decode_batch(ok, pp, "cuda"), decode_batch(ok, pp, "cpu")):
        assert (a.cpu() - b).abs().max() < MAX_ABS
