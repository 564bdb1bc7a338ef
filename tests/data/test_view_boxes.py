"""The views' crop boxes: deterministic from (seed, row, view), RandomResizedCrop's distribution, replayed
from the recipe alone; render_view on the original equals torchvision's resized_crop (+ flip)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmkd.data.views import ViewBox, ViewRecipe, ViewRecipeError, draft_request, render_view


def test_box_depends_only_on_seed_row_view_and_size():
    r = ViewRecipe(k=4, seed=3)
    again = ViewRecipe.from_attrs(r.to_attrs())  # the recipe as stored in a teacher's attrs replays every box
    boxes = [r.box(row, v, (640, 480)) for row in range(50) for v in range(4)]
    assert boxes == [again.box(row, v, (640, 480)) for row in range(50) for v in range(4)]
    assert len(set(boxes)) == len(boxes)  # rows and views draw different boxes
    assert r.box(7, 1, (640, 480)) != ViewRecipe(k=4, seed=4).box(7, 1, (640, 480))
    # order of calls does not matter (no global RNG)
    assert [r.box(row, 0, (640, 480)) for row in reversed(range(50))][::-1] == boxes[::4]


def test_box_pinned_values():
    """The drawing is part of the store format (recipe version 1): changing it must change the version."""
    r = ViewRecipe(k=2)
    assert r.box(5, 1, (640, 480)) == ViewBox(65, 81, 532, 450, True)
    assert r.box(0, 0, (40, 40)) == ViewRecipe(k=2).box(0, 0, (40, 40))


def test_boxes_follow_random_resized_crop_distribution():
    r = ViewRecipe(k=8, scale=(0.35, 1.0))
    w, h = 640, 480
    areas, aspects, flips = [], [], 0
    for row in range(500):
        for b in r.boxes(row, (w, h)):
            assert 0 <= b.left < b.right <= w and 0 <= b.top < b.bottom <= h
            areas.append((b.right - b.left) * (b.bottom - b.top) / (w * h))
            aspects.append((b.right - b.left) / (b.bottom - b.top))
            flips += b.flip
    assert min(areas) >= 0.345 and max(areas) <= 1.0
    assert min(aspects) >= 0.74 and max(aspects) <= 1.34
    # the same distribution as torchvision's RandomResizedCrop (its own RNG) on the same image size
    import torch
    from torchvision.transforms import RandomResizedCrop

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tv = [RandomResizedCrop.get_params(torch.empty(1).expand(3, h, w), [0.35, 1.0], [3 / 4, 4 / 3])
              for _ in range(4000)]
    tv_areas = [ch * cw / (w * h) for _, _, ch, cw in tv]
    tv_aspects = [cw / ch for _, _, ch, cw in tv]
    assert np.abs(np.percentile(areas, [10, 50, 90]) - np.percentile(tv_areas, [10, 50, 90])).max() < 0.02
    assert abs(np.mean(np.log(aspects)) - np.mean(np.log(tv_aspects))) < 0.02
    assert 0.45 < flips / 4000 < 0.55
    assert not any(b.flip for b in ViewRecipe(k=3, flip=False).boxes(1, (w, h)))
    short = min(min(b.right - b.left, b.bottom - b.top) for row in range(500) for b in r.boxes(row, (w, h)))
    assert short >= r.min_side_fraction() * min(w, h)


def test_recipe_refuses_bad_values_and_unknown_versions():
    for bad in (dict(k=0), dict(k=2, scale=(0.5, 0.2)), dict(k=2, scale=(0, 1)), dict(k=2, ratio=(2, 1))):
        with pytest.raises(ViewRecipeError):
            ViewRecipe(**bad)
    attrs = ViewRecipe(k=2).to_attrs()
    with pytest.raises(ViewRecipeError, match="version 2 is unknown"):
        ViewRecipe.from_attrs({**attrs, "version": 2})
    with pytest.raises(ViewRecipeError, match="not a view recipe"):
        ViewRecipe.from_attrs({"k": 2})
    with pytest.raises(ViewRecipeError, match="out of range"):
        ViewRecipe(k=2).box(0, 2, (10, 10))


def test_render_view_on_the_original_is_torchvisions_resized_crop():
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    r = ViewRecipe(k=4, seed=1)
    for v, box in enumerate(r.boxes(3, img.size)):
        want = TF.resized_crop(img, box.top, box.left, box.bottom - box.top, box.right - box.left, [32, 32],
                               interpolation=TF.InterpolationMode.BICUBIC)
        if box.flip:
            want = TF.hflip(want)
        got = render_view(img, box, img.size, (32, 32), "bicubic")
        assert np.array_equal(np.asarray(got), np.asarray(want)), v


def test_render_view_from_a_smaller_copy_crops_the_same_region():
    rng = np.random.default_rng(1)
    big = Image.fromarray(np.kron(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8)))
    small = big.resize((120, 80), Image.Resampling.BICUBIC)
    box = ViewRecipe(k=1).box(0, 0, big.size)
    a = np.asarray(render_view(big, box, big.size, (32, 32))).astype(float)
    b = np.asarray(render_view(small, box, big.size, (32, 32))).astype(float)
    assert np.abs(a - b).mean() < 12  # the same region (other boxes differ by ~80 on this image)
    other = ViewRecipe(k=1).box(1, 0, big.size)
    c = np.asarray(render_view(big, other, big.size, (32, 32))).astype(float)
    assert np.abs(a - c).mean() > 2 * np.abs(a - b).mean()


def test_draft_request_keeps_every_box_at_the_side():
    boxes = [ViewBox(0, 0, 400, 300, False), ViewBox(10, 10, 210, 310, True)]
    w, h = draft_request((800, 600), boxes, 100)
    assert (w, h) == (400, 300)  # the 200-px box must keep 100 px: half scale
    assert draft_request((800, 600), boxes, 1000) == (800, 600)  # never above the full size
