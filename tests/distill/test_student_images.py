"""The student's fast image path (mmkd/distill/images.py): the same crop boxes as open_clip's transform, the
same decoded pixels as Pillow at the same DCT scale, Pillow's filter within a grey level, Pillow's verdict on
images libjpeg-turbo does not take."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mmkd.data.images import BadSample
from mmkd.distill.images import FastImages, crop_params
from mmkd.distill.student import build_student, resolve_student
from tests.distill.conftest import TINY_STUDENT


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _smooth(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([128 + 100 * np.sin(xx / 37), 128 + 100 * np.cos(yy / 23), (xx + yy) % 256], -1)
    return arr.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def plan224() -> FastImages:
    cfg = {**TINY_STUDENT, "vision_cfg": {**TINY_STUDENT["vision_cfg"], "image_size": 224}}
    plan = FastImages.plan(build_student(resolve_student(cfg)).train_transform)
    assert plan is not None
    return plan


@pytest.mark.parametrize("scale", [(0.9, 1.0), (0.35, 1.0), (0.08, 1.0)])
def test_crop_params_draws_get_params_box_for_box(scale):
    """Same seed -> the same box as torchvision's get_params, and the RNG left in the same state."""
    rng = np.random.default_rng(0)
    for seed in range(150):
        h, w = (int(x) for x in rng.integers(8, 3000, 2))
        torch.manual_seed(seed)
        want = T.RandomResizedCrop.get_params(torch.empty(1).expand(3, h, w), list(scale), [3 / 4, 4 / 3])
        after_want = torch.rand(1)
        torch.manual_seed(seed)
        got = crop_params(h, w, scale, (3 / 4, 4 / 3))
        assert got == want, (seed, h, w)
        assert torch.equal(torch.rand(1), after_want)


def test_jpeg_decoded_at_the_smallest_covering_scale_as_pillow_decodes_it(plan224, monkeypatch):
    """The crop box is left at least the output size at the chosen M/8 scale, never more than 8/(M-1) times
    it, and libjpeg-turbo's pixels at 1/2 are Pillow's draft pixels at 1/2, bit for bit."""
    import simplejpeg

    from mmkd.distill import images

    data = _jpeg(_smooth(900, 1344), quality=90)
    seen = []
    real = images._decode_jpeg

    def spy(data, full, box, out):
        pixels = real(data, full, box, out)
        seen.append((full, box, pixels.shape))
        return pixels

    monkeypatch.setattr(images, "_decode_jpeg", spy)
    for seed in range(20):
        torch.manual_seed(seed)
        assert plan224.decode(data).shape == (224, 224, 3)
    for full, box, shape in seen:
        m = round(8 * shape[1] / full[0])
        bw, bh = box[2] - box[0], box[3] - box[1]
        assert min(bw, bh) * m / 8 >= 224 and (m == 1 or min(bw, bh) * (m - 1) / 8 < 224), (box, m)
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (672, 450))
    assert img.size == (672, 450)
    ours = simplejpeg.decode_jpeg(data, "RGB", min_width=672, min_height=450)
    assert np.array_equal(ours, np.asarray(img.convert("RGB")))


def test_resize_is_pillows_filter_within_a_grey_level():
    """Crop, then resize (as torchvision's resized_crop on a PIL image): within 2 grey levels of Pillow."""
    from mmkd.distill.images import _resized_crop

    arr = _smooth(240, 320)
    for box, mode, pil in [((10, 5, 310, 230), "bicubic", Image.Resampling.BICUBIC),
                           ((0, 0, 320, 240), "bilinear", Image.Resampling.BILINEAR),
                           ((40, 30, 200, 150), "bicubic", Image.Resampling.BICUBIC)]:  # upsampled
        got = _resized_crop(arr, box, (224, 224), mode).astype(int)
        want = np.asarray(Image.fromarray(arr).crop(box).resize((224, 224), pil)).astype(int)
        assert np.abs(got - want).max() <= 2 and np.abs(got - want).mean() < 0.05, (box, mode)


def test_images_libjpeg_turbo_does_not_take_go_through_pillow(plan224):
    """A CMYK JPEG and a PNG decode through Pillow; a truncated JPEG gets Pillow's verdict."""
    arr = _smooth(300, 400)
    cmyk = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(cmyk, format="JPEG")
    png = io.BytesIO()
    Image.fromarray(arr).save(png, format="PNG")
    for data in (cmyk.getvalue(), png.getvalue(), _jpeg(arr[..., 0])):  # the last one: a greyscale JPEG
        torch.manual_seed(0)
        out = plan224.decode(data)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    good = _jpeg(arr, quality=90)
    with pytest.raises(BadSample) as e:
        plan224.decode(good[: len(good) // 2])
    assert e.value.reason == "truncated"
    with pytest.raises(BadSample) as e:
        plan224.decode(b"\xff\xd8\xff\xe0 not a jpeg")
    assert e.value.reason in ("corrupt", "truncated")


def test_normalize_is_to_tensor_and_normalize(plan224):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    got = plan224.normalize([imgs[0], None, imgs[2]])
    norm = T.Normalize(plan224.mean, plan224.std)
    for k in (0, 2):
        want = norm(T.ToTensor()(Image.fromarray(imgs[k])))
        assert torch.allclose(got[k], want, atol=1e-5)
    assert not got[1].any()
