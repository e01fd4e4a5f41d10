"""The state one server holds: recognizer, keys, audit log, metrics, limits.

Routers call :meth:`Service.audited` from a worker thread (``run_in_threadpool``): it runs
one Recognizer / Gallery operation, writes its audit row (also when it fails) and counts
decisions. Nothing here knows about HTTP except the status written to the audit row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import MegaclassError
from ..fusion import FusedRecognizer
from ..fusion_gallery import EnsembleGallery
from ..gallery.protocol import GalleryProtocol
from ..recognizer import Recognizer
from .audit import AuditLog
from .db import ServiceDB
from .http_errors import internal_decision, mark_audited, status_of
from .keys import KeyInfo, KeyStore
from .limits import Limits
from .metrics import Metrics
from .ratelimit import RefusalLimiter
from .thumbnails import NoThumbnails, ThumbnailStore


@dataclass
class Service:
    """Everything a request handler needs (stored in ``app.state.service``)."""

    recognizer: Recognizer | FusedRecognizer
    db: ServiceDB
    limits: Limits = field(default_factory=Limits)
    metrics: Metrics = field(default_factory=Metrics)
    thumbnails: ThumbnailStore | NoThumbnails = field(
        default_factory=lambda: NoThumbnails("this service keeps no thumbnails"))

    def __post_init__(self) -> None:
        self.keys = KeyStore(self.db)
        self.audit = AuditLog(self.db)
        self.refusals = RefusalLimiter(max_refusals=self.limits.max_refusals, window_s=60.0)
        # add_samples reads then rewrites a class's mean template: serialise it with erase
        self.class_write_lock = threading.Lock()
        self.closed = False

    @property
    def gallery(self) -> GalleryProtocol | EnsembleGallery:
        return self.recognizer.gallery

    def audited(self, key: KeyInfo, operation: str, labels: Sequence[str | None],
                work: Callable[[], Any], describe: Callable[[Any], tuple[list, str]],
                status: int = 200) -> Any:
        """Run ``work()``; audit ``describe(result) -> (labels, decision)`` or the error."""
        try:
            result = work()
        except MegaclassError as exc:
            self.audit.record(key.id, operation, labels, f"error: {type(exc).__name__}", status_of(exc))
            raise
        except Exception as exc:  # a bug or a resource failure: audited, answered as a bare 500
            self.audit.record(key.id, operation, labels, internal_decision(exc), 500)
            mark_audited(exc)
            raise
        involved, decision = describe(result)
        self.audit.record(key.id, operation, involved, decision, status)
        return result

    def close(self) -> None:
        """Save the gallery index snapshot and close both connections. Idempotent."""
        if not self.closed:
            self.closed = True
            self.recognizer.close()
            self.db.close()
