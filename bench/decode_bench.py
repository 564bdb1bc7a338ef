"""Full vs reduced-size JPEG decode (``mmkd extract --decode full|reduced``), measured side by side.

    python bench/decode_bench.py [--fixtures ../shared/fixtures] [--repeats 3] [--model small|vitb16] [--min-mp 1]

Images: every JPEG of the shared fixtures (the PMC figures of mmkd-clip-demo and the
modality examples), plus a copy of each upscaled to about 1.2 MP (re-encoded at
quality 90), so sizes span 0.05-8 MP as in BIOMEDICA. For each teacher
preprocessing (224 px: open_clip ``shortest`` resize + centre crop; ``longest`` +
pad as MedCLIP; ``squash`` as a plain resize) it prints, on one core:

  images/s   decode + the teacher's transform, full vs reduced, and their ratio
  pixels     cosine between the two preprocessed tensors: mean and worst
  features   cosine between a random-weight ViT's image features of the two
             (``small``: 224 px, width 256, 4 layers; ``vitb16``: open_clip ViT-B-16)

and writes the table as JSON (``--json PATH``). No GPU needed; figures go in the README.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np

FITS = ("shortest", "longest", "squash")


def load_images(fixtures: Path) -> list[tuple[str, bytes]]:
    """The fixture JPEGs and an upscaled (~1.2 MP) re-encoded copy of each."""
    from PIL import Image

    files = sorted(p for p in fixtures.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no JPEGs under {fixtures}; pass --fixtures DIR (the shared fixtures folder)")
    out = []
    for p in files:
        data = p.read_bytes()
        out.append((p.name, data))
        img = Image.open(io.BytesIO(data)).convert("RGB")
        scale = (1.2e6 / (img.width * img.height)) ** 0.5
        if scale > 1.05:
            big = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
            buf = io.BytesIO()
            big.save(buf, format="JPEG", quality=90)
            out.append((f"{p.stem}@1.2MP", buf.getvalue()))
    return out


def transform(fit: str):
    """A 224-px teacher transform with the given resize mode (OpenAI mean/std)."""
    from mmkd.teachers.base import Preprocessing

    return Preprocessing(224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711),
                         resize_mode=fit).build()


def timed(images: list[bytes], tf, reduce_to, repeats: int) -> tuple[float, list]:
    from mmkd.data.images import decode_image

    best, tensors = float("inf"), []
    for _ in range(repeats):
        t = time.perf_counter()
        tensors = [tf(decode_image(d, reduce_to=reduce_to)) for d in images]
        best = min(best, time.perf_counter() - t)
    return len(images) / best, tensors


def model(kind: str):
    import open_clip
    import torch

    torch.manual_seed(0)
    if kind == "vitb16":
        return open_clip.create_model("ViT-B-16").visual.eval()
    cfg = {"embed_dim": 256, "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "patch_size": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    return open_clip.model.CLIP(**cfg).visual.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", default=os.environ.get("MMKD_FIXTURES", str(Path(__file__).resolve().parents[2]
                                                                            / "shared" / "fixtures")))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", choices=["small", "vitb16"], default="small")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--min-mp", type=float, default=0.0, help="only images of at least this many megapixels")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from PIL import Image

    named = []
    for name, d in load_images(Path(args.fixtures)):
        w, h = Image.open(io.BytesIO(d)).size
        if w * h / 1e6 >= args.min_mp:
            named.append((name, d, w * h / 1e6))
    if not named:
        raise SystemExit(f"no fixture JPEG of at least {args.min_mp} MP")
    images = [d for _, d, _ in named]
    megapixels = [mp for _, _, mp in named]
    vit = model(args.model)
    rows = []
    for fit in FITS:
        tf = transform(fit)
        full_rate, full = timed(images, tf, None, args.repeats)
        red_rate, red = timed(images, tf, (224, fit), args.repeats)
        a, b = torch.stack(full), torch.stack(red)
        pix = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).numpy()
        with torch.no_grad():
            fa, fb = vit(a), vit(b)
        feat = torch.nn.functional.cosine_similarity(fa, fb, dim=1).numpy()
        worst = int(np.argmin(feat))
        rows.append({"fit": fit, "full_img_s": full_rate, "reduced_img_s": red_rate, "speedup": red_rate / full_rate,
                     "pixel_cos_mean": float(pix.mean()), "pixel_cos_min": float(pix.min()),
                     "feature_cos_mean": float(feat.mean()), "feature_cos_min": float(feat.min()),
                     "worst_image": named[worst][0]})
    print(f"{len(images)} JPEGs, {min(megapixels):.2f}-{max(megapixels):.2f} MP (median {np.median(megapixels):.2f}); "
          f"one core; {args.model} random-weight ViT for feature cosines")
    print(f"{'fit':<9} {'full img/s':>10} {'reduced':>9} {'speed-up':>9} {'pixel cos mean/min':>20} "
          f"{'feature cos mean/min':>22}  worst")
    for r in rows:
        print(f"{r['fit']:<9} {r['full_img_s']:>10.1f} {r['reduced_img_s']:>9.1f} {r['speedup']:>8.2f}x "
              f"{r['pixel_cos_mean']:>10.5f}/{r['pixel_cos_min']:.5f} {r['feature_cos_mean']:>11.5f}/"
              f"{r['feature_cos_min']:.5f}  {r['worst_image']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": len(images), "model": args.model, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
