"""A bounded load test: concurrent asyncio + httpx clients mixing identify and enroll.

Loopback only, stops by itself after ``duration`` seconds. Each client loops: with
probability ``identify_share`` it identifies one glyph image of an enrolled class, else it
enrolls a new class from 3 images. Reports p50 / p99 latency per operation and overall,
throughput and the error count (any non-2xx status or transport error).

Example
-------
>>> report = run_against_server("model/", duration=5, clients=8)   # doctest: +SKIP
>>> print(report["summary"])                                        # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import io
import random
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

_ENROLL_IMAGES = 3


def _png(image) -> bytes:
    from PIL import Image

    arr = (np.asarray(image).reshape(image.shape[-2:]) * 255).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def drive(url: str, token: str, *, queries: list[bytes], enroll_sets: list[list[bytes]],
                duration: float = 30.0, clients: int = 8, identify_share: float = 0.8,
                seed: int = 0) -> dict:
    """Run the load against a server at ``url`` (must be loopback) and return the figures."""
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError(f"the load test only talks to loopback servers, not {url}")
    headers = {"Authorization": f"Bearer {token}"}
    samples: list[tuple[str, float, bool]] = []
    run_id = f"{random.Random().getrandbits(32):08x}"

    async def client(i: int, http: httpx.AsyncClient, deadline: float) -> None:
        rng = random.Random(seed * 1000 + i)
        n = 0
        while time.perf_counter() < deadline:
            if rng.random() < identify_share:
                op = "identify"
                files = [("files", ("q.png", rng.choice(queries), "image/png"))]
                request = http.post("/v1/identify", files=files, params={"k": 5, "no_threshold": True})
            else:
                op = "enroll"
                imgs = rng.choice(enroll_sets)
                files = [("files", (f"{j}.png", b, "image/png")) for j, b in enumerate(imgs)]
                request = http.post("/v1/classes", files=files,
                                    data={"label": f"load-{run_id}-{i}-{n}"})
            n += 1
            start = time.perf_counter()
            try:
                ok = (await request).is_success
            except httpx.HTTPError:
                ok = False
            samples.append((op, time.perf_counter() - start, ok))

    probes: list[float] = []

    async def probe(http: httpx.AsyncClient, deadline: float) -> None:
        """/healthz a few times a second: slow answers would mean a blocked event loop."""
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                await http.get("/healthz")
                probes.append(time.perf_counter() - start)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.25)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as http, \
            httpx.AsyncClient(base_url=url, timeout=60) as side:
        start = time.perf_counter()
        deadline = start + duration
        await asyncio.gather(probe(side, deadline), *(client(i, http, deadline) for i in range(clients)))
        elapsed = time.perf_counter() - start
    report = summarise(samples, elapsed, clients)
    report["healthz_p50_ms"] = _percentile([p * 1000 for p in probes], 50)
    report["healthz_p99_ms"] = _percentile([p * 1000 for p in probes], 99)
    if probes:
        report["summary"] += (f"\n healthz: p50 {report['healthz_p50_ms']:.1f} ms  p99 "
                              f"{report['healthz_p99_ms']:.1f} ms (during the load)")
    return report


def summarise(samples: list[tuple[str, float, bool]], elapsed: float, clients: int) -> dict:
    """Latency percentiles (ms), throughput and errors, per operation and overall."""
    def figures(rows):
        lat = [s * 1000 for _, s, _ in rows]
        return {"requests": len(rows), "errors": sum(not ok for *_, ok in rows),
                "p50_ms": _percentile(lat, 50), "p99_ms": _percentile(lat, 99),
                "per_second": len(rows) / elapsed if elapsed else 0.0}

    report = {"clients": clients, "seconds": elapsed, "all": figures(samples),
              "identify": figures([s for s in samples if s[0] == "identify"]),
              "enroll": figures([s for s in samples if s[0] == "enroll"])}
    lines = [f"{clients} clients, {elapsed:.1f} s, loopback"]
    for name in ("identify", "enroll", "all"):
        f = report[name]
        if f["requests"]:
            lines.append(f"{name:>8}: {f['requests']:6d} requests  {f['per_second']:7.1f}/s  "
                         f"p50 {f['p50_ms']:7.1f} ms  p99 {f['p99_ms']:7.1f} ms  errors {f['errors']}")
    report["summary"] = "\n".join(lines)
    return report


def run_against_server(model: str | Path, gallery: str | Path | None = None, *, duration: float = 30.0,
                       clients: int = 8, identify_share: float = 0.8, classes: int = 200,
                       seed: int = 0) -> dict:
    """Enroll ``classes`` glyph classes, serve the gallery on a free loopback port, drive it.

    Uses a fresh temporary gallery unless ``gallery`` is given; creates an enroller key
    for the run directly in the gallery database.
    """
    from ..data.glyphs import GlyphSource
    from ..recognizer import Recognizer
    from .db import ServiceDB
    from .keys import KeyStore
    from .process import ServerProcess

    with tempfile.TemporaryDirectory(prefix="megaclass-load-") as tmp:
        gallery = Path(gallery) if gallery is not None else Path(tmp) / "gallery"
        ids = np.arange(900_000, 900_000 + classes)
        with Recognizer(Path(model), gallery) as rec:  # a new gallery takes the model's dim
            size = rec.encoder.input_size
            rec.enroll_many(GlyphSource(ids, samples_per_class=3, seed=seed, size=size).iter_classes(),
                            replace=True)
        with ServiceDB(gallery) as db:
            _, token = KeyStore(db).add("loadtest", "enroller")
        queries = [_png(GlyphSource.samples(int(c), n=1, seed=seed + 1, size=size)[0]) for c in ids[:64]]
        enroll_sets = [[_png(x) for x in GlyphSource.samples(950_000 + j, n=_ENROLL_IMAGES, seed=seed,
                                                              size=size)] for j in range(32)]
        with ServerProcess(model, gallery) as server:
            report = asyncio.run(drive(server.url, token, queries=queries, enroll_sets=enroll_sets,
                                       duration=duration, clients=clients,
                                       identify_share=identify_share, seed=seed))
        report["gallery_classes_before"] = classes
        return report
