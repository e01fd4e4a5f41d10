"""Spherical k-means over class centres or prototypes (FAISS), for grouping classes.

Used by the hierarchical head (groups = clusters of class centres) and the triplet head
(hard negatives from the anchor's own cluster).

Example
-------
>>> import torch
>>> x = torch.nn.functional.normalize(torch.randn(200, 8), dim=1)
>>> assign = kmeans_assign(x, 4, seed=0)
>>> assign.shape, int(assign.max()) < 4
((200,), True)
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


def kmeans_assign(vectors: torch.Tensor | np.ndarray, k: int, *, seed: int = 0,
                  niter: int = 20) -> np.ndarray:
    """Cluster index (int64, shape ``(N,)``) of each row of ``vectors`` among ``k`` clusters.

    Rows are L2-normalised and clustered by cosine (spherical k-means, ``faiss.Kmeans``).
    """
    import faiss

    x = vectors.detach().float().cpu().numpy() if torch.is_tensor(vectors) else np.asarray(vectors)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ConfigError(f"k-means needs a non-empty (N, D) matrix, got shape {x.shape}")
    if not 1 <= k <= x.shape[0]:
        raise ConfigError(f"k-means needs 1 <= k <= {x.shape[0]} rows, got k={k}")
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    km = faiss.Kmeans(x.shape[1], int(k), niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=max(256, x.shape[0] // k + 1))
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64)
