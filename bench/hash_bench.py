"""Cost of per-image content hashes: extract's and distill's per-row CPU work with and without sha256.

Per image, timed over the same bytes held in memory (disk reads excluded, so the ratio is an upper bound).
The two parts are timed apart (best of ``--repeat`` passes each) and added, because on a loaded machine the
noise of one with-and-without pair exceeds the hash's cost:

* extract: ``decode_image`` + a CLIP teacher transform (resize 224, centre crop, to tensor, normalise),
  with and without ``sha256`` of the bytes (what ``BlockWorker._prepare`` adds);
* distill: the same decode + transform (what ``StoreBatches._images`` does), with and without the verify
  (sha256 + compare).

The forward pass is left out: it only makes the ratios smaller.

    python bench/hash_bench.py --fixtures ../shared/fixtures --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import io
import time
from pathlib import Path

import numpy as np


def _images(fixtures: Path, n_large: int) -> dict[str, list[bytes]]:
    from PIL import Image

    modality = sorted((fixtures / "modality-examples").glob("*.jp*g"))
    sets = {"fixture JPEGs (modality-examples)": [p.read_bytes() for p in modality]}
    rng = np.random.default_rng(0)
    large = []
    for i in range(n_large):
        # 1280 x 960 = 1.23 MP, smooth content (a photo compresses to ~0.1-0.3 MB, not to noise's 1+ MB)
        y, x = np.mgrid[0:960, 0:1280]
        arr = np.stack([(x * (i + 1) / 7 + 40 * np.sin(y / 37)) % 256, (y / 4 + 30 * np.cos(x / 53)) % 256,
                        (x + y) / 9 % 256], axis=-1).astype(np.uint8)
        arr = np.clip(arr.astype(np.int16) + rng.integers(-8, 8, arr.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        large.append(buf.getvalue())
    sets["1.23 MP JPEGs (1280x960, q90)"] = large
    return sets


def _transform():
    from torchvision import transforms as T

    return T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize((0.481, 0.458, 0.408), (0.269, 0.261, 0.276))])


def _rate(datas: list[bytes], work, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for d in datas:
            work(d)
        best = min(best, time.perf_counter() - t)
    return len(datas) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "fixtures")
    ap.add_argument("--large", type=int, default=16, help="number of >= 1 MP images")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import torch

    from mmkd.data.images import decode_image

    torch.set_num_threads(1)
    tf = _transform()

    def prepare(d: bytes):
        return tf(decode_image(d))

    def digest(d: bytes):
        return hashlib.sha256(d).hexdigest()

    recorded: dict[int, str] = {}

    def verify(d: bytes):  # distill: hash, then compare with the recorded hex
        return digest(d) == recorded.setdefault(id(d), "0" * 64)

    print("| images | mean size | decode + transform (ms/row) | sha256 (ms/row) | rows/s without | rows/s with hash "
          "(extract) | ratio | rows/s with verify (distill) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, datas in _images(args.fixtures, args.large).items():
        size = float(np.mean([len(d) for d in datas]))
        t_prep = 1 / _rate(datas, prepare, args.repeat)
        t_hash = 1 / _rate(datas, digest, args.repeat * 10)
        t_verify = 1 / _rate(datas, verify, args.repeat * 10)
        base, hashed, verified = 1 / t_prep, 1 / (t_prep + t_hash), 1 / (t_prep + t_verify)
        print(f"| {name} ({len(datas)}) | {size / 1e3:.0f} kB | {1e3 * t_prep:.1f} | {1e3 * t_hash:.2f} | "
              f"{base:.1f} | {hashed:.1f} | {base / hashed:.3f} | {verified:.1f} | {base / verified:.3f} |")


if __name__ == "__main__":
    main()
