"""``megaclass bench reembed``: kill -9 a gallery re-embed at random points, check, resume.

A gallery of ``classes`` glyph classes is enrolled with model A; then ``megaclass gallery
reembed`` runs in real subprocesses towards model B and is SIGKILLed at a random moment,
or at a named point (after the k-th staged chunk, just before or just after the switch's
commit), until ``cycles`` kills have happened (a run that finishes first is not counted).
After every kill the gallery is opened and checked: every template is exactly the
template of its class under ONE model (the gallery's), never a mix; the integrity check
passes; every class is there; searches of that model's templates find their class; and
searches of the other model are refused. A run that completes flips the target
(B -> A -> B ...), so kills keep landing in real work. At the end the re-embed is resumed
to completion and checked once more. Both models are random-weight encoders of the same
dim (a mixed gallery would be searchable, so it would show).

Returns the per-run record and the time of one uninterrupted re-embed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _models(root: Path, dim: int) -> dict[str, Path]:
    import torch

    from ..models import Encoder
    from ..models.encoder import EncoderConfig

    out = {}
    for name, seed in (("A", 0), ("B", 1)):
        torch.manual_seed(seed)
        enc = Encoder(EncoderConfig(dim=dim, widths=(8, 16)))
        enc.save(root / f"model-{name}")
        out[name] = root / f"model-{name}"
    return out


def _expected(model: Path, classes: int, per_class: int) -> tuple[str, np.ndarray]:
    """The fingerprint and each class's template as a direct enroll with ``model`` makes it."""
    import torch

    from ..data.glyphs import GlyphSource
    from ..data.images import to_batch
    from ..models import load_encoder
    from ..recognizer import class_templates

    enc = load_encoder(model).eval()
    out = []
    for start in range(0, classes, 512):
        ids = np.arange(start, min(classes, start + 512))
        images, _ = GlyphSource.batch(ids, per_class, seed=1, size=enc.input_spec.size)
        with torch.inference_mode():
            vecs = enc.embed(to_batch(images, spec=enc.input_spec)).numpy()
        out += [class_templates(vecs[k * per_class: (k + 1) * per_class], "mean", None)[0][0]
                for k in range(len(ids))]
    return enc.fingerprint(), np.stack(out)


def _cli(*args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "megaclass.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def check_one_model(gallery_dir: Path, expected: dict[str, np.ndarray], classes: int) -> str:
    """Open the gallery and assert it is consistent on one model; returns that model."""
    from ..errors import ModelMismatchError
    from ..gallery import Gallery

    with Gallery.open(gallery_dir, create=False) as g:
        model = g.model
        assert model in expected, f"gallery model {model} is neither model"
        assert g.template_models() == {model: classes}, f"templates by model: {g.template_models()}"
        report = g.check()
        assert report["ok"], report["problems"]
        labels = g.labels()
        assert len(labels) == classes, f"{len(labels)} classes, expected {classes}"
        want = expected[model]
        for lb in labels:  # every stored template is its class's template under THIS model
            got = g.templates(lb)
            i = int(lb.split("-")[1])
            assert got.shape == (1, want.shape[1]) and np.abs(got[0] - want[i]).max() < 1e-4, \
                f"{lb}: template is not model {model}'s"
        probe = np.random.default_rng(0).choice(classes, size=min(200, classes), replace=False)
        found = g.search(want[probe], k=1, model=model)  # the served search, from the in-memory index
        assert [m[0].label for m in found] == [f"glyph-{i}" for i in probe], "search lost classes"
        assert all(m[0].score > 0.999 for m in found), "search answered another model's template"
        other = next(fp for fp in expected if fp != model)
        try:
            g.search(want[probe[:1]], k=1, model=other)
        except ModelMismatchError:
            pass
        else:
            raise AssertionError("a query of the other model was answered")
    return model


def torture(work: Path, *, classes: int = 5000, cycles: int = 20, per_class: int = 5, dim: int = 32,
            seed: int = 0, log=print) -> dict:
    """Run the kill -9 cycles in ``work`` (created); return the record (raises on a failed check)."""
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    models = _models(work, dim)
    expected, fps = {}, {}
    for name, path in models.items():
        fps[name], expected_t = _expected(path, classes, per_class)
        expected[fps[name]] = expected_t
    g = work / "gallery"
    spec = f"glyphs:0-{classes}"
    t0 = time.perf_counter()
    enroll = _cli("enroll", "-m", models["A"], "-g", g, "--from", spec, "--per-class", per_class,
                  "--quiet", "--json")
    out, err = enroll.communicate()
    if enroll.returncode:
        raise RuntimeError(f"enroll failed: {err}")
    enroll_s = time.perf_counter() - t0

    def reembed(target: str, env=None) -> subprocess.Popen:
        return _cli("gallery", "reembed", "-g", g, "-m", models[target], "--from", spec,
                    "--per-class", per_class, "--quiet", "--json", env=env)

    # one uninterrupted re-embed (A -> B) measures the time the random kills are drawn from
    t0 = time.perf_counter()
    p = reembed("B")
    out, err = p.communicate()
    if p.returncode:
        raise RuntimeError(f"reembed failed: {err}")
    full_s = time.perf_counter() - t0
    full = json.loads(out)
    startup_s = max(0.0, full_s - full["seconds"])  # interpreter + imports: kills aim past them
    assert check_one_model(g, expected, classes) == fps["B"]
    target = "A"
    record: list = []
    chunks = -(-classes // 256)  # staged chunks of a full run (reembed.CHUNK_CLASSES)
    kills = 0
    while kills < cycles and len(record) < 3 * cycles:
        how = rng.choice(("timer", "timer", "timer", "staged", "before-switch", "after-switch"))
        if how == "staged":
            how = f"staged:{rng.randint(1, chunks)}"
        env = {"MEGACLASS_REEMBED_CRASH_AT": how} if how != "timer" else None
        p = reembed(target, env)
        delay = startup_s + rng.uniform(0.0, 1.0) * full["seconds"] if how == "timer" else None
        try:
            p.wait(timeout=delay if delay is not None else 600)
        except subprocess.TimeoutExpired:
            p.kill()  # SIGKILL
            p.wait()
        p.communicate()
        killed = p.returncode == -9
        if p.returncode not in (0, -9):
            raise RuntimeError(f"cycle {len(record)}: reembed exited {p.returncode}: {p.stderr}")
        kills += killed
        model = check_one_model(g, expected, classes)
        done = model == fps[target]
        record.append({"cycle": len(record), "target": target, "kill": how if killed else "none (finished)",
                       "delay_s": delay, "model_after": "A" if model == fps["A"] else "B", "switched": done})
        log(f"run {len(record)} (kill {kills}/{cycles}): kill {record[-1]['kill']}, gallery on model "
            f"{record[-1]['model_after']}, one-model check passed")
        if done:
            target = "B" if target == "A" else "A"
    t0 = time.perf_counter()
    p = reembed(target)  # resume to completion
    out, err = p.communicate()
    if p.returncode:
        raise RuntimeError(f"final resume failed: {err}")
    resume_s = time.perf_counter() - t0
    assert check_one_model(g, expected, classes) == fps[target]
    switches = sum(r["switched"] for r in record)
    return {"classes": classes, "samples_per_class": per_class, "dim": dim, "cycles": cycles,
            "runs": len(record), "kills": kills, "switches_during_cycles": switches,
            "enroll_seconds": enroll_s, "reembed_seconds": full_s,
            "reembed_in_process_seconds": full["seconds"],
            "reembed_classes_per_second": classes / full["seconds"],
            "final_resume_seconds": resume_s, "final_model": target, "staged_in_full_run": full["staged"],
            "record": record, "python": sys.version.split()[0]}
