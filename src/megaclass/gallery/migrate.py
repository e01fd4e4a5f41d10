"""Copy a gallery into another backend: ``megaclass gallery migrate SRC DST`` (a folder,
``milvus://...`` or ``milvus-lite://...`` on either side).

Classes go in batches, each one all-or-nothing ``enroll_many`` on the destination, in the
source's enrollment order; a class the destination already holds is skipped, so an
interrupted migration resumes where it stopped when run again. Settings (threshold,
calibration, model fingerprint, template mode, ensemble state) follow at the end. Only the
protocol is used, so any pair of backends works.

Example
-------
>>> migrate("faces", "milvus://127.0.0.1:19530/faces")       # doctest: +SKIP
{'classes': 1200, 'copied': 1200, 'skipped': 0, 'templates': 3600, ...}
"""

from __future__ import annotations

import time

from .open import open_gallery


def _batches(src, labels: list[str], batch: int):
    if hasattr(src, "iter_classes"):  # a Milvus source reads many classes per scan
        yield from src.iter_classes(batch)
        return
    for i in range(0, len(labels), batch):
        yield [(lb, src.templates(lb), src.class_meta(lb)) for lb in labels[i:i + batch]]


def migrate(src_spec, dst_spec, *, batch: int = 500, key=None, dst_key=None, progress: bool = True) -> dict:
    """Copy every class (and the settings) of ``src_spec`` into ``dst_spec`` (created with
    the source's dim when missing); resumable. Returns counts and the time taken."""
    t0 = time.monotonic()
    src = open_gallery(src_spec, create=False, key=key)
    try:
        dst = open_gallery(dst_spec, dim=src.dim, key=dst_key)
        try:
            labels = src.labels()
            have = set(dst.labels())
            copied = templates = 0
            bar = None
            if progress:
                from rich.progress import Progress

                bar = Progress(transient=False)
                bar.start()
                task = bar.add_task(f"migrate -> {getattr(dst, 'uri', dst_spec)}", total=len(labels))
            try:
                for part in _batches(src, labels, batch):
                    todo = [item for item in part if item[0] not in have]
                    if todo:
                        templates += dst.enroll_many([(lb, v, m or None) for lb, v, m in todo])
                        copied += len(todo)
                    if bar is not None:
                        bar.advance(task, len(part))
            finally:
                if bar is not None:
                    bar.stop()
            settings = {}
            for k, v in src.settings().items():
                if v is not None and dst.get_setting(k) != v:
                    dst.set_setting(k, v)
                    settings[k] = v
            return {"classes": len(labels), "copied": copied, "skipped": len(labels) - copied,
                    "templates": templates, "settings": sorted(settings), "destination_classes": len(dst),
                    "seconds": round(time.monotonic() - t0, 2)}
        finally:
            dst.close()
    finally:
        src.close()
