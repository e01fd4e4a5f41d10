"""An ensemble on one gallery location: the folder layout, and the members seen as one gallery.

An ensemble of n models keeps one gallery per model (see :mod:`megaclass.fusion`) under the
one folder the user names::

    g/ensemble.json   {"format": "megaclass-ensemble", "members": ["model-0", ...],
                       "models": [fingerprint, ...], "dims": [...]}
    g/model-0/        the gallery of the first model (a normal gallery folder)
    g/model-1/        ... of the second, in the order the models were given

``ensemble.json`` is written once, when the ensemble is created, and names the models in
order: opening ``g/`` with other models, fewer or more, or in another order, is refused with
the difference named, and so is opening it with one model as a plain gallery (or a plain
gallery with several models). The service keeps its keys and audit log in ``g/model-0``.

Example
-------
>>> import tempfile
>>> from megaclass import GlyphSource, Recognizer
>>> from megaclass.models.encoder import Encoder, EncoderConfig
>>> a, b = Encoder(EncoderConfig(dim=16, widths=(8, 16))), Encoder(EncoderConfig(dim=8, widths=(8, 8)))
>>> ens = Recognizer([a, b], gallery=tempfile.mkdtemp(), rule="borda")
>>> ens.enroll("seven", GlyphSource.samples(7, n=3))
3
>>> sorted(p.name for p in ens.gallery.path.iterdir())
['ensemble.json', 'model-0', 'model-1']
>>> ens.gallery.dim   # the members' embeddings side by side
24
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError, UnknownLabelError
from .gallery.protocol import GalleryProtocol

if TYPE_CHECKING:
    from .fusion import FusedRecognizer

MANIFEST = "ensemble.json"
FORMAT = "megaclass-ensemble"


def member_folder(root, i: int) -> Path:
    """Where member ``i``'s gallery lives under the ensemble folder ``root``."""
    return Path(os.fspath(root)) / f"model-{i}"


def read_manifest(root) -> dict | None:
    """The ensemble manifest of folder ``root``, or None when it holds no ensemble."""
    if not isinstance(root, str | os.PathLike) or "://" in str(root):
        return None
    path = Path(os.fspath(root)) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable ensemble manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not data.get("models"):
        raise ConfigError(f"{path} is not a megaclass ensemble manifest")
    return data


def is_ensemble(root) -> bool:
    return read_manifest(root) is not None


def single_model_refusal(root) -> str | None:
    """Why ``root`` cannot be opened with one model (it holds an ensemble), or None."""
    m = read_manifest(root)
    if m is None:
        return None
    return (f"{root} holds an ensemble of {len(m['models'])} models ({', '.join(m['models'])}): "
            f"open it with the same models, in order (one -m per model)")


def service_folder(root) -> Path | str:
    """The folder holding the service's database: the first member's gallery for an
    ensemble, the gallery folder itself otherwise."""
    return member_folder(root, 0) if is_ensemble(root) else root


def _names(fps) -> str:
    return ", ".join(fps) if fps else "none"


def check_models(root, fingerprints: list[str], manifest: dict) -> None:
    """ConfigError naming how ``fingerprints`` differ from the models ``root`` was enrolled with."""
    want = list(manifest["models"])
    if want == fingerprints:
        return
    head = (f"ensemble gallery {root} was enrolled with {len(want)} models (fingerprints {_names(want)}); "
            f"opened with {len(fingerprints)} ({_names(fingerprints)}): ")
    missing = [f for f in want if f not in fingerprints]
    extra = [f for f in fingerprints if f not in want]
    if sorted(want) == sorted(fingerprints):
        why = "the same models in another order; give them in the gallery's order"
    else:
        why = "; ".join(p for p in (f"missing {_names(missing)}" if missing else "",
                                     f"not in the ensemble {_names(extra)}" if extra else "") if p)
    raise ConfigError(head + why)


def open_ensemble(encoders, gallery, *, rule: str | None = None, weights=None,
                  threshold: float | None = None, templates: str | None = None, key=None,
                  create: bool = True, **recognizer_kw) -> FusedRecognizer:
    """A :class:`~megaclass.fusion.FusedRecognizer` of ``encoders`` (encoders or model paths)
    on the one gallery folder ``gallery``, in the layout of this module's docstring: created
    when missing (unless ``create=False``), checked against its manifest otherwise. ``rule``
    and ``weights`` None: the ones stored with the ensemble (``zsum``, equal for a new one)."""
    from .fusion import FusedRecognizer
    from .gallery.open import gallery_exists, is_uri, open_gallery
    from .models import load_encoder
    from .recognizer import Recognizer

    if is_uri(gallery) or not isinstance(gallery, str | os.PathLike):
        raise ConfigError("an ensemble keeps one local gallery folder per model under one folder: "
                          f"give a folder path, not {gallery!r}")
    encoders = [load_encoder(e) if isinstance(e, str | os.PathLike) else e for e in encoders]
    if not encoders:
        raise ConfigError("an ensemble needs at least one model")
    root = Path(os.fspath(gallery))
    fps = [e.fingerprint() for e in encoders]
    manifest = read_manifest(root)
    if manifest is None:
        if gallery_exists(root):
            raise ConfigError(f"{root} is a single-model gallery: open it with one model (one -m), or "
                              "give the ensemble a new folder")
        if not create:
            raise ConfigError(f"{root} is not an ensemble gallery (enroll something first)")
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "version": 1, "members": [f"model-{i}" for i in range(len(fps))],
                    "models": fps, "dims": [e.dim for e in encoders]}
        tmp = root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, root / MANIFEST)  # atomic: a folder holds a whole manifest or none
    check_models(root, fps, manifest)
    members = []
    try:
        for i, enc in enumerate(encoders):
            g = open_gallery(member_folder(root, i), dim=enc.dim, key=key, create=True)
            members.append(Recognizer(enc, g, templates=templates, **recognizer_kw))
        return FusedRecognizer(members, rule=rule, weights=weights, threshold=threshold)
    except BaseException:
        for m in members:
            m.close()
        raise


class EnsembleEncoder:
    """What an ensemble offers where one encoder is read: the input contract (the members'
    common one; ConfigError naming them when they differ), ``dim`` (sum of the members')
    and ``fingerprint()`` (theirs joined by ``+``)."""

    def __init__(self, encoders: Sequence) -> None:
        self.encoders = list(encoders)
        self.dim = sum(e.dim for e in self.encoders)

    @property
    def input_spec(self):
        specs = [e.input_spec for e in self.encoders]
        if any(s != specs[0] for s in specs[1:]):
            raise ConfigError("the ensemble's models expect different inputs "
                              f"({'; '.join(map(str, specs))}): give samples as image files, which "
                              "each model reads by its own contract")
        return specs[0]

    @property
    def input_size(self) -> int:
        return self.input_spec.size

    def fingerprint(self) -> str:
        return "+".join(e.fingerprint() for e in self.encoders)


class EnsembleGallery:
    """The member galleries of a :class:`~megaclass.fusion.FusedRecognizer` seen as one.

    Reads (labels, class meta, settings, stats) come from the first member — every member
    holds the same classes with the same meta. Writes of vectors (``enroll``,
    ``add_templates``) take ensemble embeddings, the members' side by side, and go to every
    member or none; ``search`` fuses. ``templates(label)`` gives the members' templates side
    by side, member m scaled by ``a_m = (w_m / s_m) / sum(w / s)`` (``s_m`` the spread of its
    non-mated scores: std for ``zsum``, max - min for ``minmax``; 1 before calibration), so
    the dot product of an ensemble embedding with a template is an increasing affine map of
    the fused score — exact with one template per class (``templates="mean"``, the default):
    thresholds and curves computed from it (TAR@FAR, EER) are the fused rule's.
    """

    def __init__(self, ensemble) -> None:
        self.ensemble = ensemble
        self._first = ensemble.members[0].gallery

    @property
    def path(self) -> Path:
        return Path(self._first.path).parent

    @property
    def dim(self) -> int:
        return sum(self.ensemble.dims)

    @property
    def read_only(self) -> bool:
        return any(m.gallery.read_only for m in self.ensemble.members)

    @property
    def num_templates(self) -> int:
        return self._first.num_templates

    @property
    def model(self) -> str:
        return self.ensemble.fingerprint

    def __len__(self) -> int:
        return len(self._first)

    def __contains__(self, label: object) -> bool:
        return label in self._first

    def labels(self) -> list[str]:
        return self._first.labels()

    def class_meta(self, label: str) -> dict:
        return self._first.class_meta(label)

    def erased_tag(self, label: str) -> str:
        return self._first.erased_tag(label)

    def _scales(self) -> np.ndarray:
        ens = self.ensemble
        if ens.stats_ is None or ens.rule == "borda":
            a = ens.weights.copy()
        else:
            key = (lambda s: s["std"]) if ens.rule == "zsum" else (lambda s: s["max"] - s["min"])
            a = ens.weights / np.array([max(key(s), 1e-6) for s in ens.stats_])
        return a / a.sum()

    def templates(self, label: str) -> np.ndarray:
        blocks = [m.gallery.templates(label) for m in self.ensemble.members]
        n = min(len(b) for b in blocks)
        return np.concatenate([a * b[:n] for a, b in zip(self._scales(), blocks, strict=True)],
                              axis=1).astype(np.float32)

    def search(self, vectors, k: int = 5, *, where: dict | None = None, model=None):
        return self.ensemble.search_vectors(vectors, k, where=where)

    def enroll(self, label: str, vectors, meta: dict | None = None, *, replace: bool = False) -> int:
        parts = self.ensemble.split(vectors)
        return self.ensemble._all_or_none([label], replace, lambda m: m.gallery.enroll(
            label, parts[self.ensemble.members.index(m)], meta, replace=replace))[0]

    def add_templates(self, label: str, vectors) -> int:
        if label not in self:
            raise UnknownLabelError(f"cannot add templates to {label!r}: it is not enrolled")
        parts = self.ensemble.split(vectors)
        return self.ensemble._all_or_none([label], True, lambda m: m.gallery.add_templates(
            label, parts[self.ensemble.members.index(m)]))[0]

    def erase(self, label: str) -> int:
        return self.ensemble.erase(label)

    def get_setting(self, key: str, default=None):
        """Settings of the first member, except the ensemble's own ``threshold`` and
        ``calibration`` (the fused ones)."""
        if key == "threshold":
            return self.ensemble.threshold if self.ensemble.threshold is not None else default
        if key == "calibration":
            return self.ensemble.calibration_ if self.ensemble.calibration_ is not None else default
        return self._first.get_setting(key, default)

    def set_setting(self, key: str, value) -> None:
        for m in self.ensemble.members:
            m.gallery.set_setting(key, value)

    def settings(self) -> dict:
        """Every setting (GalleryProtocol): the first member's, with the ensemble's own
        ``threshold`` and ``calibration``."""
        out = self._first.settings()
        for key in ("threshold", "calibration"):
            value = self.get_setting(key)
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out

    def stats(self) -> dict:
        ens = self.ensemble
        return {"path": str(self.path), "classes": len(self), "templates": self.num_templates,
                "dim": self.dim, "ensemble": {"rule": ens.rule, "weights": ens.weights.tolist(),
                                              "models": ens.fingerprints},
                "members": [m.gallery.stats() for m in ens.members]}

    def close(self) -> None:
        self.ensemble.close()

    def __enter__(self) -> EnsembleGallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MemberGalleries:
    """The member galleries of an ensemble folder, opened without the models: for the
    operations that need no embedding (erase from every member, stats)."""

    def __init__(self, root, key=None) -> None:
        from .gallery.open import open_gallery

        self.root = Path(os.fspath(root))
        manifest = read_manifest(self.root)
        if manifest is None:
            raise ConfigError(f"{root} holds no ensemble ({MANIFEST})")
        self.manifest: dict = manifest
        self.galleries: list[GalleryProtocol] = []
        try:
            for i in range(len(manifest["models"])):
                self.galleries.append(open_gallery(member_folder(self.root, i), key=key, create=False))
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.galleries[0])

    def erase(self, label: str) -> int:
        """Erase ``label`` from every member (UnknownLabelError, nothing erased, when a member
        lacks it); the number of templates removed from the first member."""
        missing = [str(g.path) for g in self.galleries if label not in g]
        if missing:
            raise UnknownLabelError(f"cannot erase {label!r}: it is not enrolled in {', '.join(missing)}")
        return [g.erase(label) for g in self.galleries][0]

    def get_setting(self, key: str, default=None):
        """The ensemble's own ``threshold``, ``calibration``, ``rule`` and ``weights`` (its
        stored state), else the first member's setting."""
        state = self.galleries[0].get_setting("ensemble") or {}
        return state.get(key, default) if key in ("threshold", "calibration", "rule", "weights") else \
            self.galleries[0].get_setting(key, default)

    def stats(self) -> dict:
        from .fusion import fusion_spec

        rule = self.get_setting("rule")
        return {"path": str(self.root), "classes": len(self), "models": self.manifest["models"],
                "dims": self.manifest["dims"], "rule": rule,
                "fusion": fusion_spec(rule, self.get_setting("weights")) if rule else None,
                "members": [g.stats() for g in self.galleries]}

    def close(self) -> None:
        for g in self.galleries:
            g.close()

    def __enter__(self) -> MemberGalleries:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
