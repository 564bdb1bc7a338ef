"""Multiple-instance learning heads on frozen patch features: gated-attention ABMIL and mean pooling.

ABMIL follows Ilse, Tomczak & Welling (2018), "Attention-based Deep Multiple
Instance Learning", gated variant: ``a_k = w^T (tanh(V h_k) * sigmoid(U h_k))``,
softmax over the bag's patches, the bag embedding is ``sum_k a_k h_k``. The mean-
pooling baseline classifies the average patch feature with a small MLP.

Training runs a mini-batch of bags as one padded (bags, patches, dim) tensor with a
patch mask, one forward and one backward per optimizer step, when the padded batch
holds at most ``MILConfig.batch_patches`` patch rows; the outputs are those of the
bags run one by one (the mask keeps padding out of the attention softmax and the
mean). Larger batches stream: a step loads one bag, runs it, and lets it go, so memory
is bounded by one bag (plus the head) whatever the number of slides. Losses that
couple bags (the Cox partial likelihood) use two passes per mini-batch: the bags'
outputs are first computed without a graph, the loss's gradient with respect to
each output is taken on those numbers, and each bag is then re-run with a graph
and back-propagated alone, with the same dropout mask (a per-bag seed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

BagLoader = Callable[[int], np.ndarray]
"""Index -> (patches, dim) float32 features of one bag."""


@dataclass
class MILConfig:
    """Training settings of the slide-level heads (the same for every fold and model).

    Attributes:
        folds: k of the patient-level k-fold cross-validation.
        epochs: passes over the training bags per fold.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        hidden: width of the patch embedding / MLP.
        dropout: dropout after the patch embedding.
        batch_bags: bags per optimizer step (diagnosis default 1; survival needs
            risk sets: default 32).
        max_patches: at most this many random patches of a bag per training step
            (None: all); prediction always uses every patch.
        device: torch device.
        batch_patches: run a mini-batch as one padded tensor when it holds at most this
            many patch rows (bags x longest bag); 0: always stream bag by bag.
    """

    folds: int = 5
    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-4
    hidden: int = 128
    dropout: float = 0.25
    batch_bags: int | None = None
    max_patches: int | None = None
    device: str | None = None
    batch_patches: int = 1 << 19


class GatedABMIL(nn.Module):
    """Gated attention-based MIL (Ilse et al., 2018).

    Args:
        dim: patch feature dimension.
        n_out: outputs (classes, or 1 for a survival risk).
        hidden: patch embedding width.
        attn: attention width.
        dropout: dropout on the patch embedding.
    """

    def __init__(self, dim: int, n_out: int, hidden: int = 128, attn: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Sequential(nn.Linear(hidden, attn), nn.Tanh())
        self.attn_u = nn.Sequential(nn.Linear(hidden, attn), nn.Sigmoid())
        self.attn_w = nn.Linear(attn, 1)
        self.head = nn.Linear(hidden, n_out)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """(patches, hidden) embedded patches -> (patches,) attention weights summing to 1."""
        return torch.softmax(self.attn_w(self.attn_v(h) * self.attn_u(h)).squeeze(-1), dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(self.attention(h) @ h)

    def forward_batch(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(bags, patches, dim) padded bags and their (bags, patches) bool mask -> (bags, n_out)."""
        h = self.embed(x)
        score = self.attn_w(self.attn_v(h) * self.attn_u(h)).squeeze(-1).masked_fill(~mask, float("-inf"))
        return self.head(torch.einsum("bp,bph->bh", torch.softmax(score, dim=1), h))


class MeanPoolMIL(nn.Module):
    """Mean of the bag's patch features, then a one-hidden-layer MLP."""

    def __init__(self, dim: int, n_out: int, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.mean(dim=0))

    def forward_batch(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(bags, patches, dim) padded bags and their (bags, patches) bool mask -> (bags, n_out)."""
        m = mask.to(x.dtype)[..., None]
        return self.mlp((x * m).sum(dim=1) / m.sum(dim=1))


def build_head(kind: str, dim: int, n_out: int, cfg: MILConfig) -> nn.Module:
    """``abmil`` or ``meanpool`` head.

    Raises:
        ValueError: unknown kind.
    """
    if kind == "abmil":
        return GatedABMIL(dim, n_out, cfg.hidden, cfg.hidden, cfg.dropout)
    if kind == "meanpool":
        return MeanPoolMIL(dim, n_out, cfg.hidden, cfg.dropout)
    raise ValueError(f"unknown MIL head {kind!r}; valid: abmil, meanpool")


LossFn = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]
"""(batch outputs (B, n_out), the bags' indices) -> scalar loss."""


def _bag_tensor(load: BagLoader, i: int, device: torch.device, max_patches: int | None,
                rng: np.random.Generator | None) -> torch.Tensor:
    x = np.asarray(load(i), dtype=np.float32)
    if rng is not None and max_patches is not None and len(x) > max_patches:
        x = x[np.sort(rng.choice(len(x), max_patches, replace=False))]
    return torch.from_numpy(x).to(device)


def _padded(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bags of (patches_i, dim) -> (bags, max patches, dim) zero-padded, and the (bags, max patches) mask."""
    x = torch.nn.utils.rnn.pad_sequence(bags, batch_first=True)
    lengths = torch.tensor([len(b) for b in bags], device=x.device)
    return x, torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]


def _batch_step(model: nn.Module, load: BagLoader, batch: list[int], seeds: np.ndarray, loss_fn: LossFn,
                device: torch.device, cfg: MILConfig, separable: bool) -> bool:
    """One forward + backward over the mini-batch as a padded tensor; False (nothing done) when it is over
    ``cfg.batch_patches`` patch rows or the head has no batched forward."""
    if not cfg.batch_patches or not hasattr(model, "forward_batch"):
        return False
    bags = [_bag_tensor(load, b, device, cfg.max_patches, np.random.default_rng(int(s))) for b, s in zip(batch, seeds)]
    if len(bags) * max(len(b) for b in bags) > cfg.batch_patches:
        return False
    _seed_torch(int(seeds[0]), device)
    out = model.forward_batch(*_padded(bags))
    if separable:  # the mean of the per-bag terms, as the streamed path (a weighted loss weighs within a bag)
        loss = torch.stack([loss_fn(out[k:k + 1], [b]) for k, b in enumerate(batch)]).mean()
    else:
        loss = loss_fn(out, batch)
        if not torch.isfinite(loss) or loss.grad_fn is None:
            return True  # e.g. a batch without an event: no gradient signal
    loss.backward()
    return True


def _seed_torch(seed: int, device: torch.device) -> None:
    """Seed the generators that ``device`` draws dropout from.

    Not ``torch.manual_seed``: it also queues a lazy seed for every accelerator
    backend, recording a Python stack each call, and this runs once per bag per
    step (a third of the demo's eval time went there).
    """
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def train_head(model: nn.Module, load: BagLoader, train_idx: Sequence[int], loss_fn: LossFn, cfg: MILConfig, *,
               separable: bool, seed: int = 0, batch_bags: int = 1) -> nn.Module:
    """Train ``model`` on the bags ``train_idx`` (streamed one at a time through ``load``).

    Args:
        model: the head (moved to ``cfg.device``).
        load: bag loader.
        train_idx: indices of the training bags.
        loss_fn: loss of a mini-batch of outputs.
        cfg: training settings.
        separable: the loss is a mean of per-bag terms (one pass per step);
            otherwise the two-pass scheme of the module docstring runs.
        seed: seeds the init-independent randomness (order, patch subsets, dropout).
        batch_bags: bags per optimizer step.
    """
    device = torch.device(cfg.device or "cpu")
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(seed)
    idx = np.asarray(train_idx, dtype=np.int64)
    for _epoch in range(cfg.epochs):
        order = idx[rng.permutation(len(idx))]
        for start in range(0, len(order), batch_bags):
            batch = [int(i) for i in order[start:start + batch_bags]]
            if not separable and len(batch) < 2 and start:
                continue  # a lone tail bag has no risk set
            opt.zero_grad(set_to_none=True)
            seeds = rng.integers(0, 2**31, size=len(batch))
            if len(batch) > 1 and _batch_step(model, load, batch, seeds, loss_fn, device, cfg, separable):
                pass
            elif separable:
                for b, s in zip(batch, seeds):
                    _seed_torch(int(s), device)
                    x = _bag_tensor(load, b, device, cfg.max_patches, np.random.default_rng(int(s)))
                    (loss_fn(model(x)[None], [b]) / len(batch)).backward()
            else:
                _two_pass_step(model, load, batch, seeds, loss_fn, device, cfg.max_patches)
            opt.step()
    return model.eval()


def _two_pass_step(model: nn.Module, load: BagLoader, batch: list[int], seeds: np.ndarray, loss_fn: LossFn,
                   device: torch.device, max_patches: int | None) -> None:
    outs = []
    with torch.no_grad():
        for b, s in zip(batch, seeds):
            _seed_torch(int(s), device)
            outs.append(model(_bag_tensor(load, b, device, max_patches, np.random.default_rng(int(s)))))
    leaf = torch.stack(outs).detach().requires_grad_(True)
    loss = loss_fn(leaf, batch)
    if not torch.isfinite(loss) or loss.grad_fn is None:
        return  # e.g. a batch without an event: no gradient signal
    (grad,) = torch.autograd.grad(loss, leaf)
    for row, (b, s) in enumerate(zip(batch, seeds)):
        _seed_torch(int(s), device)
        out = model(_bag_tensor(load, b, device, max_patches, np.random.default_rng(int(s))))
        (out * grad[row]).sum().backward()


@torch.no_grad()
def predict(model: nn.Module, load: BagLoader, idx: Sequence[int], device: str | None = None) -> np.ndarray:
    """(len(idx), n_out) float64 outputs of the trained head, every patch of each bag (one bag at a time)."""
    dev = torch.device(device or "cpu")
    model.to(dev).eval()
    return np.stack([model(_bag_tensor(load, int(i), dev, None, None)).double().cpu().numpy() for i in idx])
