"""AdamW update cost: the distiller's optimizer (fused) vs torch's per-tensor loop and foreach, side by side.

    python bench/optim_bench.py [--model demo|vit-b-16|both] [--steps 20] [--threads 2]

For each model (the demo student, or open_clip's ViT-B-16 CLIP built from its config,
no weights) it times ``optimizer.step()`` with random gradients, median of ``--steps``
after 3 warm-up steps, for three AdamW implementations over the same param groups:
``build_optimizer`` (what ``mmkd distill`` uses: fused where every parameter allows it),
``foreach=True`` and ``foreach=False`` (torch's CPU default, a loop of elementwise ops per
tensor). Prints ms per step and the ratios to the distiller's optimizer, and checks that
all three give the same parameters after one step (max abs difference).
"""

from __future__ import annotations

import argparse
import statistics
import time


def _model(name: str):
    import open_clip

    from mmkd.demo.config import student_config

    if name == "demo":
        return open_clip.model.CLIP(**student_config())
    return open_clip.create_model("ViT-B-16", pretrained=None)


def _time_steps(opt, params, steps: int) -> float:
    import torch

    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    for _ in range(3):
        opt.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench(name: str, steps: int) -> None:
    import copy

    import torch

    from mmkd.distill.optim import OptimConfig, build_optimizer, param_groups

    cfg = OptimConfig(lr=1e-3)
    base = _model(name)
    n = sum(p.numel() for p in base.parameters())
    results, after = {}, {}
    for kind in ("mmkd (fused)", "foreach", "per-tensor loop"):
        model = copy.deepcopy(base)
        if kind == "mmkd (fused)":
            opt = build_optimizer({"student": model}, cfg)
        else:
            opt = torch.optim.AdamW(param_groups({"student": model}, cfg.weight_decay), lr=cfg.lr,
                                    betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=kind == "foreach")
        params = [p for p in model.parameters() if p.requires_grad]
        torch.manual_seed(0)
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt.step()
        after[kind] = torch.cat([p.detach().flatten() for p in params])
        results[kind] = _time_steps(opt, params, steps)
    ours = results["mmkd (fused)"]
    print(f"{name}: {n / 1e6:.1f}M parameters, {torch.get_num_threads()} torch threads, median of {steps} steps")
    for kind, ms in results.items():
        diff = float((after[kind] - after["mmkd (fused)"]).abs().max())
        print(f"  {kind:16s} {ms:9.2f} ms/step   {ms / ours:5.2f}x the distiller's   max |param diff| {diff:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["demo", "vit-b-16", "both"], default="both")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for name in (["demo", "vit-b-16"] if args.model == "both" else [args.model]):
        bench(name, args.steps)


if __name__ == "__main__":
    main()
