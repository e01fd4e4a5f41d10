"""A cost model of one head-only training step: floating-point work, memory traffic, state.

It turns the measured CPU numbers of ``bench heads`` into statements about other machines.
Per step (B embeddings of D dims, C classes, float32):

* **dense** (``softmax``, ``cosface``/``arcface``): logits ``B x C`` from ``C x D`` weights,
  then two more matmuls in backward: ``6 B C D`` flops. Every weight row is read in the
  forward and backward passes and the optimizer reads/writes weights, gradient and momentum:
  about ``8`` passes over ``4 C D`` bytes (cosine heads add a normalised copy: ``+3``).
* **partial_fc**: the same on ``k = max(rate C, B/m)`` sampled rows (``6 B k D`` flops), plus
  gathering and writing back those rows and their optimizer state.
* **hierarchical** (``G = sqrt C`` groups of ``S = C / G``): group logits ``6 B G D``; each
  sample's own group ``6 B S D``; rows touched: the batch's groups, ``min(B/m, G) S``.
* **adaptive** with balanced classes (cutoffs at C/2 and 0.85 C, tails projected to D/4 and
  D/16): about ``0.53 x`` the dense flops and ``0.59 x`` its parameters.

:func:`predict` takes the larger of work / throughput and traffic / bandwidth (a roofline
bound); :func:`calibrate` fits the effective throughput from a measured dense step, so the
model can be checked against the other heads' measured steps before it is trusted for a GPU.

Example
-------
>>> c = step_cost("partial_fc", 1_000_000, 256, 256, sample_rate=0.1)
>>> round(step_cost("softmax", 1_000_000, 256, 256)["flops"] / c["flops"], 1)
10.0
"""

from __future__ import annotations

import math

#: Published peak numbers of one data-centre GPU (NVIDIA A100 80GB SXM datasheet): FP32
#: (non-tensor) flop/s, TF32 tensor-core flop/s, HBM bandwidth, memory.
A100 = {"name": "A100 80GB", "fp32_flops": 19.5e12, "tf32_flops": 156e12, "bytes_per_s": 2.039e12,
        "memory_bytes": 80e9}


def step_cost(head: str, c: int, d: int, b: int, *, sample_rate: float = 0.1, m: int = 4,
              optimizer_states: int = 1) -> dict:
    """Flops, bytes moved and bytes of state (weights + optimizer) of one head-only step."""
    w = 4.0 * c * d                                    # one pass over the weights
    state = w * (1 + optimizer_states)
    if head in ("softmax", "cosface", "arcface", "normface"):
        passes = 8 + (3 if head != "softmax" else 0)
        return {"flops": 6.0 * b * c * d, "bytes": passes * w + 16.0 * b * c, "state_bytes": state}
    if head == "partial_fc":
        k = max(sample_rate * c, b / m)
        rows = 4.0 * k * d
        traffic = 2 * (1 + optimizer_states) * rows + 6 * rows + 16.0 * b * k
        return {"flops": 6.0 * b * k * d, "bytes": traffic, "state_bytes": state}
    if head == "hierarchical":
        g = max(2, round(math.sqrt(c)))
        s = c / g
        k = min(b / m, g) * s
        flops = 6.0 * b * g * d + 6.0 * b * s * d
        traffic = 8 * 4.0 * g * d + 2 * (1 + optimizer_states) * 4.0 * k * d + 4.0 * b * s * d * 3
        return {"flops": flops, "bytes": traffic, "state_bytes": state + 4.0 * g * d * 2}
    if head == "adaptive":
        flops = 6.0 * b * (0.5 * c * d + 0.35 * (d * d / 4 + 0.35 * c * d / 4)
                           + 0.15 * (d * d / 16 + 0.15 * c * d / 16))
        params = 0.5 * c * d + 0.35 * c * d / 4 + 0.15 * c * d / 16
        return {"flops": flops, "bytes": 8 * 4.0 * params + 16.0 * b * 0.5 * c,
                "state_bytes": 4.0 * params * (1 + optimizer_states)}
    raise ValueError(f"no cost model for head {head!r}")


def predict(cost: dict, flops_per_s: float, bytes_per_s: float) -> float:
    """Seconds per step: the slower of compute and memory traffic (a roofline bound)."""
    return max(cost["flops"] / flops_per_s, cost["bytes"] / bytes_per_s)


def calibrate(measured_s: float, cost: dict) -> float:
    """Effective flop/s of a measured step, taken as compute-bound (true of dense heads at B=256)."""
    return cost["flops"] / measured_s


def measure_bandwidth(mbytes: int = 256, repeats: int = 5) -> float:
    """This process's copy bandwidth in bytes/s (read + write counted), best of ``repeats``."""
    import time

    import numpy as np

    src = np.ones(mbytes * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


def check(rows: list[dict], flops_per_s: float, bytes_per_s: float, **kw) -> list[dict]:
    """Model vs measurement for ``bench heads`` speed rows (``head``, ``classes``, ``dim``, step)."""
    out = []
    for r in rows:
        if "median_step_s" not in r or r.get("dtype"):
            continue
        try:
            cost = step_cost(r["head"], r["classes"], r["dim"], kw.get("batch", 256),
                             sample_rate=kw.get("sample_rate", 0.1))
        except ValueError:
            continue
        pred = predict(cost, flops_per_s, bytes_per_s)
        out.append({"head": r["head"], "classes": r["classes"], "measured_s": r["median_step_s"],
                    "predicted_s": pred, "measured_over_predicted": r["median_step_s"] / pred})
    return out


def max_classes(head: str, d: int, memory_bytes: float, *, batch: int = 256, optimizer_states: int = 1,
                reserve: float = 0.8) -> int:
    """Largest C whose head state -- plus, for dense heads, three ``B x C`` float buffers (logits,
    probabilities, their gradient) -- fits in ``reserve`` of ``memory_bytes`` (one device, no sharding)."""
    per_class = step_cost(head, 1_000_000, d, batch, optimizer_states=optimizer_states)["state_bytes"] / 1e6
    if head in ("softmax", "cosface", "arcface", "normface"):
        per_class += 3 * 4 * batch
    elif head == "adaptive":
        per_class += 3 * 4 * batch * 0.5
    return int(reserve * memory_bytes / per_class)
