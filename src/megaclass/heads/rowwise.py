"""Row-sparse optimizer updates and memory budgeting for heads with millions of rows.

A dense optimizer on a ``(C, D)`` weight touches every row every step, and autograd
materialises a dense ``C x D`` gradient even when only a few rows were used. Here the
caller passes the ``k`` rows it touched (unique indices) and their ``(k, D)`` gradient;
the update reads those rows of the weight and of its optimizer state, computes in
float32 and writes them back with ``index_copy_`` -- in chunks, so the extra memory is a
few MB whatever ``k`` is. Rows never sampled keep their state untouched ("lazy"
updates, like ``torch.optim.SparseAdam``).

Example
-------
>>> import torch
>>> w = torch.ones(10, 4)
>>> state = make_state(w, "sgd", torch.float32)
>>> rowwise_step(w, state, torch.tensor([1, 3]), torch.ones(2, 4), lr=0.5, kind="sgd", momentum=0.0)
>>> w[1, 0].item(), w[0, 0].item()
(0.5, 1.0)
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, InsufficientMemoryError

OPTIMIZERS = ("sgd", "adam")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CHUNK_ROWS = 16384


def state_names(kind: str, momentum: float = 0.9) -> tuple[str, ...]:
    """Names of the ``(C, D)`` state buffers the optimizer keeps per row."""
    if kind == "sgd":
        return ("momentum_buffer",) if momentum else ()
    if kind == "adam":
        return ("exp_avg", "exp_avg_sq")
    raise ConfigError(f"row-wise optimizer must be one of {OPTIMIZERS}, got {kind!r}")


def make_state(weight: torch.Tensor, kind: str, dtype: torch.dtype,
               momentum: float = 0.9) -> dict[str, torch.Tensor]:
    """Zero-initialised per-row optimizer state shaped like ``weight``."""
    return {name: torch.zeros(weight.shape, dtype=dtype) for name in state_names(kind, momentum)}


def available_memory_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo, or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(what: str, needed: int, *, fraction: float = 0.9) -> None:
    """Raise :class:`InsufficientMemoryError` if ``needed`` bytes exceed ``fraction`` of free RAM."""
    avail = available_memory_bytes()
    if avail is not None and needed > fraction * avail:
        raise InsufficientMemoryError(
            f"{what} needs about {needed / 2**30:.2f} GiB but only {avail / 2**30:.2f} GiB of RAM "
            f"is available: use fewer classes, a smaller dim, bfloat16 storage or sgd without momentum"
        )


def rowwise_step(weight: torch.Tensor, state: dict[str, torch.Tensor], idx: torch.Tensor,
                 grad: torch.Tensor, *, lr: float, kind: str = "sgd", momentum: float = 0.9,
                 nesterov: bool = True, weight_decay: float = 0.0, betas=(0.9, 0.999),
                 eps: float = 1e-8, step: int = 1, current: torch.Tensor | None = None) -> None:
    """Update rows ``idx`` (unique) of ``weight`` and ``state`` in place from ``grad`` (k, D).

    ``sgd`` follows ``torch.optim.SGD`` (coupled weight decay, optional Nesterov);
    ``adam`` follows ``torch.optim.AdamW`` (decoupled decay) with bias correction by the
    global ``step``. Math is float32 whatever the storage dtype.

    ``current`` (k, D), optional: the rows' values as the caller already read them (the
    forward's leaf), which saves gathering them from ``weight`` again -- at 1M classes a
    large random read a step. It must equal ``weight[idx]``; a float32 ``current`` is
    overwritten with the updated rows.
    """
    if current is not None and tuple(current.shape) != (idx.numel(), weight.shape[1]):
        raise ValueError(f"current rows have shape {tuple(current.shape)}, expected "
                         f"({idx.numel()}, {weight.shape[1]})")
    for lo in range(0, idx.numel(), _CHUNK_ROWS):
        rows = idx[lo: lo + _CHUNK_ROWS]
        g = grad[lo: lo + _CHUNK_ROWS].float()
        if current is None:
            w = weight.index_select(0, rows).float()
        else:
            w = current[lo: lo + _CHUNK_ROWS].detach().float()
        if kind == "sgd":
            if weight_decay:
                g = g.add(w, alpha=weight_decay)
            if momentum:
                buf = state["momentum_buffer"]
                m = buf.index_select(0, rows).float().mul_(momentum).add_(g)
                buf.index_copy_(0, rows, m.to(buf.dtype))
                g = g.add(m, alpha=momentum) if nesterov else m
            w.add_(g, alpha=-lr)
        elif kind == "adam":
            b1, b2 = betas
            if weight_decay:
                w.mul_(1.0 - lr * weight_decay)
            m_buf, v_buf = state["exp_avg"], state["exp_avg_sq"]
            m = m_buf.index_select(0, rows).float().lerp_(g, 1.0 - b1)
            v = v_buf.index_select(0, rows).float().mul_(b2).addcmul_(g, g, value=1.0 - b2)
            m_buf.index_copy_(0, rows, m.to(m_buf.dtype))
            v_buf.index_copy_(0, rows, v.to(v_buf.dtype))
            denom = (v / (1.0 - b2 ** step)).sqrt_().add_(eps)
            w.addcdiv_(m, denom, value=-lr / (1.0 - b1 ** step))
        else:
            raise ConfigError(f"row-wise optimizer must be one of {OPTIMIZERS}, got {kind!r}")
        weight.index_copy_(0, rows, w.to(weight.dtype))


def init_rows_(weight: torch.Tensor, std: float = 0.01, seed: int | None = None) -> torch.Tensor:
    """Fill ``weight`` with N(0, std^2) chunk by chunk (no float32 copy of a bf16 matrix)."""
    gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
    rows = max(1, _CHUNK_ROWS * 16 // max(1, math.ceil(weight.shape[1] / 256)))
    for lo in range(0, weight.shape[0], rows):
        chunk = torch.randn(weight[lo: lo + rows].shape, generator=gen) * std
        weight[lo: lo + rows].copy_(chunk)
    return weight
