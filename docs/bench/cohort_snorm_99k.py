"""Gallery-side normalisation on the 99,000-class gallery of cohort_rule_99k.py (README,
"Deciding known from unknown"): S-norm in the spirit of Auckenthaler et al. 2000 / Kenny 2010,
with each enrolled class's own cohort mean z (the mean cosine of its 20 nearest other classes
in the gallery) subtracted beside the probe's cohort mean mp. Same features, gallery, mated and
non-mated searches as cohort_rule_99k.py (which this runs first). Output: cohort_snorm_99k.txt.
"""
import runpy, time
import numpy as np
ns = runpy.run_path(__file__.replace("cohort_snorm_99k", "cohort_rule_99k"))  # features, gallery, searches
G, T, table = ns["G"], ns["T"], ns["table"]
t=time.time()
N=20
z = np.empty(G, np.float32)
for a in range(0, G, 2000):
    s = T[a:a+2000] @ T.T
    s[np.arange(len(s)), np.arange(a, a+len(s))] = -9
    v = np.partition(-s, N, axis=1)[:, :N]
    z[a:a+2000] = -v.mean(1)
print("class cohort means", time.time()-t, "s; z mean", z.mean(), "std", z.std(), flush=True)
def mk(alpha, beta):
    return lambda t: t[1][:, 0] - alpha * t[1][:, 1:21].mean(1) - beta * z[t[0][:, 0]]
stats = {"raw s1": lambda t: t[1][:, 0], "cohort:20": mk(1, 0)}
for a, b in [(0.5, 0.5), (1, 0.5), (1, 1), (0.75, 0.25), (0, 1)]:
    stats[f"s1 - {a} mp - {b} z_best"] = mk(a, b)
table(stats, width=28)
