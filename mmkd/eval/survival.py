"""Survival metrics and losses: Harrell's C-index and the Cox partial likelihood.

Pair convention (the same as lifelines' ``concordance_index`` and scikit-survival's
``concordance_index_censored``): a pair (i, j) is comparable when the one with the
shorter time had an event, or when the times tie and exactly one of the two had
the event (that one is the earlier failure). It is concordant when the earlier
failure has the higher risk; equal risks count one half.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmkd.errors import MMKDError

_CHUNK = 2048  # rows of the pair matrix per step: bounds memory at _CHUNK x n


class SurvivalDataError(MMKDError, ValueError):
    """Times or events that cannot be survival data (negative, NaN, events outside {0, 1})."""


def check_survival(time: Sequence[float], event: Sequence[float], ids: Sequence[str] | None = None,
                   what: str = "survival data") -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 times and int64 events.

    Raises:
        SurvivalDataError: a negative / non-finite time or an event not in {0, 1};
            names the first offending ids and values.
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(t))]
    if t.shape != e.shape or t.ndim != 1:
        raise SurvivalDataError(f"{what}: times {t.shape} and events {e.shape} must be two equal 1-d arrays")
    bad_t = np.flatnonzero(~np.isfinite(t) | (t < 0))
    if len(bad_t):
        ex = [(ids[i], float(t[i])) for i in bad_t[:5]]
        raise SurvivalDataError(f"{what}: {len(bad_t)} rows have a negative or missing time, e.g. {ex}; "
                                "times must be finite and >= 0")
    bad_e = np.flatnonzero(~np.isin(e, (0, 1)))
    if len(bad_e):
        ex = [(ids[i], float(e[i])) for i in bad_e[:5]]
        raise SurvivalDataError(f"{what}: {len(bad_e)} rows have an event indicator not in {{0, 1}}, e.g. {ex}; "
                                "write 1 for an observed event, 0 for censored")
    return t, e.astype(np.int64)


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index of ``risk`` (higher = earlier failure); NaN when no pair is comparable.

    Vectorised over blocks of the pair matrix: O(n^2) time, O(``_CHUNK`` x n) memory.
    """
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event).astype(bool)
    r = np.asarray(risk, dtype=np.float64)
    num = den = 0.0
    idx = np.flatnonzero(e)
    for start in range(0, len(idx), _CHUNK):
        i = idx[start:start + _CHUNK]
        ti, ri = t[i, None], r[i, None]
        comparable = (t[None] > ti) | ((t[None] == ti) & ~e[None])
        conc = (ri > r[None]) + 0.5 * (ri == r[None])
        num += float((conc * comparable).sum())
        den += float(comparable.sum())
    return num / den if den else float("nan")


def cox_loss(risk, time, event):
    """Negative Cox partial log-likelihood (Breslow ties), averaged over events.

    Args:
        risk: (B,) torch tensor of log-risks.
        time: (B,) torch tensor of times.
        event: (B,) torch tensor of 0/1 events.

    Returns:
        Scalar tensor; a constant zero (no graph) when the batch has no event.
    """
    import torch

    ev = event.bool()
    if not ev.any():
        return torch.zeros((), dtype=risk.dtype)
    at_risk = (time[None, :] >= time[:, None]).to(risk.dtype)  # row i: who is still at risk at time_i
    log_denominator = torch.logsumexp(risk[None, :] + torch.log(at_risk), dim=1)
    return -(risk - log_denominator)[ev].mean()
