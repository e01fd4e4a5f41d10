"""Raw FAISS, the 1M real-embedding data: single-query time of k=1 vs k=2 template neighbours at the knobs
megaclass chose (IVF1024,PQ32x4fs,RFlat, nprobe 68, k_factor 128): how much of megaclass's 1.6x is the
second neighbour it fetches for k=1 with 2 templates per class."""
import numpy as np, faiss, time
import sys
D = sys.argv[1] + "/"  # the cached embeddings folder of `bench gallery --classes 1m` (emb-...-c1000000-t2-...)
X = np.load(D + "templates.npy", mmap_mode="r"); Q = np.ascontiguousarray(np.load(D + "mated.npy")[:300])
faiss.omp_set_num_threads(2)
idx = faiss.index_factory(X.shape[1], "IVF1024,PQ32x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
rng = np.random.default_rng(0); tr = np.ascontiguousarray(X[np.sort(rng.choice(len(X), 100_000, replace=False))])
t = time.time(); idx.train(tr)
for a in range(0, len(X), 200_000): idx.add(np.ascontiguousarray(X[a:a + 200_000]))
print(f"built in {time.time() - t:.0f}s", flush=True)
faiss.omp_set_num_threads(1)
ivf = faiss.extract_index_ivf(idx); ivf.nprobe = 68; faiss.downcast_index(idx).k_factor = 128
for rep in range(3):
    for k in (1, 2):
        t = []
        for q in Q:
            s = time.perf_counter(); idx.search(q[None], k); t.append(time.perf_counter() - s)
        print(f"round {rep} k={k}: p50 {1000 * np.median(t):.3f} ms", flush=True)
