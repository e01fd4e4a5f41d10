"""Decision statistics on a 99,000-class gallery (README, "Deciding known from unknown").

Features: the reference model's embeddings of glyph classes 10,000,000 + (0..99,999), 6 train,
1 validation, 2 test drawings per class, as `megaclass bench heads --acc-sizes 100k` caches them
(megaclass.bench.heads_accuracy, class-major .npy files). Gallery: classes 0..98,999, each the
normalised mean of its first 5 train drawings (the recognizer's "mean" mode), exact search.
Mated: one test drawing of 5,000 random gallery classes. Non-mated: the 9 drawings of the
1,000 classes left out; the threshold is set on 500 of them (4,500 searches) and FPIR checked
on the other 500 (4,500 held-out searches). Output: cohort_rule_99k.txt. Usage:
python docs/bench/cohort_rule_99k.py  (edit F to point at the features folder)
"""
import numpy as np, sys
F = "/work/heads-100k/features/"
tr = np.load(F + "train_x.npy", mmap_mode="r"); te = np.load(F + "test_x.npy", mmap_mode="r")
va = np.load(F + "val_x.npy", mmap_mode="r")
C = 100_000; per = 5; G = C - 1000; K = 50
tr = tr.reshape(C, 6, -1) if tr.ndim == 2 else tr
te = te.reshape(C, 2, -1) if te.ndim == 2 else te
va = va.reshape(C, 1, -1) if va.ndim == 2 else va
T = np.asarray(tr[:G, :per]).mean(1); T /= np.linalg.norm(T, axis=1, keepdims=True)
rng = np.random.default_rng(0); mated_cls = rng.choice(G, 5000, replace=False)
M = np.asarray(te[mated_cls, 0])
nm_all = np.concatenate([np.asarray(x[G:]) for x in (tr, va, te)], 1)      # 1000 classes x 9 drawings
cal = nm_all[:500].reshape(-1, nm_all.shape[-1]); held = nm_all[500:].reshape(-1, nm_all.shape[-1])
def top(q):
    I, V = [], []
    for a in range(0, len(q), 1000):
        s = q[a:a + 1000] @ T.T
        idx = np.argpartition(-s, K, axis=1)[:, :K]; v = np.take_along_axis(s, idx, 1); o = np.argsort(-v, 1)
        I.append(np.take_along_axis(idx, o, 1)); V.append(np.take_along_axis(v, o, 1))
    return np.concatenate(I), np.concatenate(V)
ma, c, nm = top(M), top(cal), top(held)
hit = ma[0][:, 0] == mated_cls
stats = {
  "raw s1": lambda t: t[1][:, 0],
  "s1 - s2": lambda t: t[1][:, 0] - t[1][:, 1],
  "s1 - mean(s2..s5)": lambda t: t[1][:, 0] - t[1][:, 1:5].mean(1),
  "s1 - mean(s2..s10)": lambda t: t[1][:, 0] - t[1][:, 1:10].mean(1),
  "s1 - mean(s2..s20)": lambda t: t[1][:, 0] - t[1][:, 1:20].mean(1),
  "s1 - mean(s2..s50)": lambda t: t[1][:, 0] - t[1][:, 1:50].mean(1),
  "cohort:20": lambda t: t[1][:, 0] - t[1][:, 1:21].mean(1),
  "s1 - 0.5 s2": lambda t: t[1][:, 0] - 0.5 * t[1][:, 1],
  "s1 - 0.5 mean(s2..s10)": lambda t: t[1][:, 0] - 0.5 * t[1][:, 1:10].mean(1),
  "s1 - 0.75 mean(s2..s10)": lambda t: t[1][:, 0] - 0.75 * t[1][:, 1:10].mean(1),
}
def table(stats, width=26):
    """One line per statistic: FNIR at FPIR 1 % and 10 % (threshold from the calibration searches)."""
    print(f"gallery {G}, rank-1 {hit.mean():.4f}  (mated {len(hit)}, calib {len(c[1])}, held-out {len(nm[1])})")
    for name, f in stats.items():
        row = [f"{name:{width}s}"]
        for fpir in (0.01, 0.1):
            cs = np.sort(f(c))[::-1]; thr = cs[int(np.floor(fpir * len(cs)))]
            row.append(f"FNIR@{fpir:.0%} {1 - (hit & (f(ma) > thr)).mean():.3f} (held FPIR {(f(nm) > thr).mean():.3f})")
        print("  ".join(row), flush=True)
if __name__ == "__main__":
    table(stats)
