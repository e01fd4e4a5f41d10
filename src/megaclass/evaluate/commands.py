"""CLI commands of the evaluation area: ``megaclass evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..cli_common import (
    GalleryOpt,
    JsonOpt,
    ModelsOpt,
    QuietOpt,
    SeedOpt,
    SkipBadOpt,
    _emit,
    _labelled,
    _recognizer,
    err_console,
)
from ..errors import ConfigError
from ..progress import ItemProgress


def register(app: typer.Typer) -> None:
    """Add the evaluation commands to the ``megaclass`` app."""
    app.command()(evaluate)


def _sizes(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(x.replace("_", "").lower().replace("k", "000").replace("m", "000000"))
                for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"bad --gallery-sizes {text!r}: use e.g. 1000,10k,100k,1m") from None


def _baseline_name(spec: str | None) -> str:
    from .baseline import PIXELS

    return "raw pixels" if spec == PIXELS else f"model {spec}"


def _sources(spec: str | None, files, per_class: int, seed: int):
    """The original of each query: its file, or the glyph drawing (id, index, seed) it is."""
    from ..data.spec import parse_glyph_range
    from .originals import glyph_sources

    if spec is None:
        return None
    if files is not None:
        return files
    ids = parse_glyph_range(spec)
    return glyph_sources(ids, per_class, seed) if ids is not None else None


def _class_samples(spec: str | None, per_class: int):
    """Where the report finds an image of a gallery class (see ``class_sample_finder``)."""
    from ..data.spec import parse_glyph_range
    from .originals import ENROLL_GLYPH_SEED, class_sample_finder, glyph_sources

    if spec is None:
        return class_sample_finder()
    ids = parse_glyph_range(spec)
    if ids is not None:
        return class_sample_finder(glyph_sources(ids, per_class, ENROLL_GLYPH_SEED),
                                   [f"glyph-{i}" for i in ids for _ in range(per_class)])
    return class_sample_finder(folder=spec)


def _baseline(spec: str, samples_spec: str, samples_per_class: int, rec, images, nm_images,
              query_args: tuple, truth, fpirs: tuple):
    """The baseline's Evaluation on the same queries, and a note on what it could enroll."""
    from .baseline import PIXELS, check_classes, model_baseline, pixel_baseline, resolve
    from .originals import ENROLL_GLYPH_SEED
    from .pipeline import evaluate_recognizer

    spec = resolve(spec)

    def load(input_spec):  # enrolled samples by a model's input contract
        return _labelled(samples_spec, input_spec, samples_per_class, ENROLL_GLYPH_SEED)

    if spec == PIXELS:  # the model's own input tensors, as pixels
        base = pixel_baseline(*load(rec.encoder.input_spec))
    else:
        base, input_spec = model_baseline(spec, load)
        queries, non_mated, per_class, seed = query_args
        images = _labelled(queries, input_spec, per_class, seed)[0]
        nm_images = _labelled(non_mated, input_spec, per_class, seed)[0] if non_mated else None
    note = check_classes(base, rec.gallery.labels(), truth)
    return evaluate_recognizer(base, images, truth, nm_images, fpirs=fpirs), note


def _record_report(rec, path: Path) -> None:
    """Note the report in the gallery (setting ``last_report``): the service's console shows
    the latest one. A read-only gallery keeps no note (the report is written all the same)."""
    from datetime import UTC, datetime

    from ..errors import ReadOnlyGalleryError

    try:
        rec.gallery.set_setting("last_report", {"path": str(Path(path).resolve()), "model": rec.fingerprint,
                                                "time": datetime.now(UTC).isoformat(timespec="seconds")})
    except ReadOnlyGalleryError:
        pass


def _pct(v) -> str:
    return "undefined" if v is None else f"{v:.2%}"


def evaluate(model: ModelsOpt, gallery: GalleryOpt,
             queries: Annotated[str, typer.Option("--queries", "--mated", "-q", help="Samples of ENROLLED classes (labels must match): glyphs:START-END or a folder root/<class>/<img>.")],
             non_mated: Annotated[str | None, typer.Option(help="Samples of classes NOT enrolled (for FPIR, FNIR@FPIR).")] = None,
             report: Annotated[Path | None, typer.Option(help="Write report.html + metrics.json to this folder.")] = None,
             target_fpir: Annotated[list[float], typer.Option(help="FPIR(s) to report FNIR at; the first also sets the gallery-size curve's.")] = [0.01, 0.1, 0.003, 0.001],
             gallery_sizes: Annotated[str | None, typer.Option(help="Gallery-size curve: total classes, e.g. 1k,10k,100k,1m (distractors added to a scratch copy).")] = None,
             distractors: Annotated[int, typer.Option(help="First glyph class id of the distractor classes.")] = 10_000_000,
             distractor_samples: Annotated[int, typer.Option(help="Samples enrolled per distractor class.")] = 3,
             per_class: Annotated[int, typer.Option(help="With glyphs: queries per class.")] = 1,
             scaling_index: Annotated[str, typer.Option(help="FAISS index of the gallery-size curve's scratch gallery: Flat (exact, measures the model alone) or a spec / auto (measures model + index).")] = "Flat",
             key_file: Annotated[Path | None, typer.Option("--key-file", help=(
                 "Encryption key file of the gallery (default: $MEGACLASS_GALLERY_KEY_FILE, else "
                 "$MEGACLASS_GALLERY_KEY). With --gallery-sizes the templates are copied into a scratch "
                 "gallery in a temporary folder, removed at the end, that is NOT encrypted unless the "
                 "key comes from the environment."))] = None,
             baseline: Annotated[str | None, typer.Option(help=(
                 "Measure a baseline on the same queries beside the model: 'pixels' (nearest class "
                 "mean on L2-normalised model-input pixels) or a model directory (nearest class mean "
                 "of its embeddings). Needs --gallery-samples."))] = None,
             gallery_samples: Annotated[str | None, typer.Option(help=(
                 "The samples the gallery was enrolled from (glyphs:START-END, drawn like enroll "
                 "--from: --gallery-per-class per class, seed 1; or a folder root/<class>/<img>): the "
                 "baseline enrolls them, and the report shows one beside each confusion."))] = None,
             gallery_per_class: Annotated[int, typer.Option(help="With --gallery-samples glyphs: samples per class.")] = 5,
             group_by: Annotated[str | None, typer.Option("--group-by", help=(
                 "Class meta key: FNIR/FPIR per group with 95% intervals and differentials. Mated "
                 "searches take their true class's value, non-mated ones their own class's "
                 "(glyph classes carry strokes, style, complexity); missing = 'unknown'."))] = None,
             non_mated_meta: Annotated[Path | None, typer.Option("--non-mated-meta", help=(
                 "CSV 'file,<attribute>...' (or 'id,...'): attributes of non-mated probes given as "
                 "files, matched by path, file name or class folder name."))] = None,
             decision: Annotated[str | None, typer.Option("--decision", help=(
                 "Decision rule of the open-set rates: 'score' or 'cohort[:N]' (see calibrate "
                 "--decision); default the gallery's. The gallery-size curve reports both."),
                 show_default=False)] = None,
             seed: SeedOpt = 4, quiet: QuietOpt = False, skip_bad_files: SkipBadOpt = False,
             as_json: JsonOpt = False) -> None:
    """Closed-set, open-set 1:N, verification 1:1 metrics; optional HTML report and gallery-size curve."""
    from ..decisions import DecisionRule
    from .pipeline import _embed, evaluate_recognizer

    rule = None if decision is None else DecisionRule.parse(decision)  # a bad rule fails first

    if baseline is not None and not gallery_samples:
        raise ConfigError("--baseline needs --gallery-samples: the samples the gallery was enrolled "
                          "from, which the baseline enrolls its own way")

    if non_mated_meta is not None and group_by is None:
        raise ConfigError("--non-mated-meta needs --group-by: the attribute to split the searches by")
    if non_mated_meta is not None and not non_mated:
        raise ConfigError("--non-mated-meta needs --non-mated: the probes it describes")
    if group_by is not None and not group_by.strip():
        raise ConfigError("--group-by needs a class meta key, e.g. --group-by strokes")
    nm_table = None
    if non_mated_meta is not None:
        from .groups import read_probe_meta

        nm_table = read_probe_meta(non_mated_meta)
    sizes = _sizes(gallery_sizes)
    if len(model) > 1 and (sizes or baseline):
        raise ConfigError("--gallery-sizes and --baseline measure one model: not with several -m")
    rec = _recognizer(model, gallery, key=key_file)
    with rec:
        images, truth, files = _labelled(queries, rec.encoder.input_spec, per_class, seed, with_files=True,
                                         skip_bad_files=skip_bad_files)
        nm_images = nm_files = nm_labels = None
        if non_mated:
            nm_images, nm_labels, nm_files = _labelled(non_mated, rec.encoder.input_spec, per_class, seed,
                                               with_files=True, skip_bad_files=skip_bad_files)
        n_all = len(images) + (0 if nm_images is None else len(nm_images))
        with ItemProgress(n_all, "embed queries", unit="images", enabled=not (quiet or as_json)) as bar:
            q_vec = _embed(rec, images, 1024, bar.advance)
            nm_vec = _embed(rec, nm_images, 1024, bar.advance) if nm_images is not None else None
        nm_meta = None
        if group_by is not None and nm_labels is not None:
            from .groups import probe_meta

            nm_meta = probe_meta(nm_files, nm_labels, nm_table)
        ev = evaluate_recognizer(rec, q_vec, truth, nm_vec, fpirs=tuple(target_fpir), seed=seed,
                                 group_by=group_by, non_mated_meta=nm_meta, decision=decision)
        base_ev, notes = None, []
        if baseline is not None and gallery_samples:  # both or neither (checked above)
            base_ev, note = _baseline(baseline, gallery_samples, gallery_per_class, rec, images,
                                      nm_images, (queries, non_mated, per_class, seed), truth,
                                      tuple(target_fpir))
            notes += [note] if note else []
        scaling = None
        if sizes:
            from .scaling import gallery_size_curve, glyph_distractors

            first: DecisionRule = rule or getattr(rec, "decision", None) or DecisionRule()
            rules = [first.spec] + [r for r in ("score", "cohort") if DecisionRule.parse(r) != first]
            scaling = gallery_size_curve(rec, q_vec, truth, nm_vec,
                                         glyph_distractors(distractors, distractor_samples,
                                                           size=rec.encoder.input_size),
                                         sizes=sizes, target_fpir=target_fpir[0],
                                         index=scaling_index, log=err_console.print, decisions=rules)
        m = ev.metrics
        # flat keys first (the shape of earlier versions), then every metric by family
        result = {"mated_searches": m["closed_set"]["queries"],
                  "non_mated_searches": m["open_set"]["non_mated_searches"],
                  "top1": m["closed_set"]["top_k"]["top1"], "top5": m["closed_set"]["top_k"]["top5"],
                  "open_set": m["open_set"]["fnir_at_fpir"], "gallery": m["gallery"],
                  "closed_set": m["closed_set"], "identification": m["open_set"],
                  "verification": m["verification"]}
        if scaling:
            result["gallery_size"] = scaling
        if "groups" in m:
            result["groups"] = m["groups"]
        if base_ev is not None:
            result["baseline"] = {"name": _baseline_name(baseline), "notes": notes, **base_ev.metrics}
        if files is not None:  # queries from a folder: which file each result belongs to
            result["mated_by_file"] = [
                {"file": f, "class": t, "rank1": p, "rank": int(r) or None,
                 "score": float(sc) if sc > -1e30 else None}
                for f, t, p, r, sc in zip(files, truth, ev.predictions, ev.ranks, ev.mated_scores, strict=True)]
        if nm_files is not None and ev.non_mated_scores is not None:
            result["non_mated_by_file"] = [{"file": f, "score": float(sc) if sc > -1e30 else None}
                                           for f, sc in zip(nm_files, ev.non_mated_scores, strict=True)]
        if report is not None:
            from .report import write_report

            path = write_report(report, ev, images=images, labels=truth, scaling=scaling,
                                context={"model": " + ".join(map(str, model)), "gallery": str(gallery),
                                         "queries": queries, "non-mated": non_mated or "none",
                                         **({"baseline": baseline} if baseline else {}),
                                         **({"gallery samples": gallery_samples}
                                            if gallery_samples else {})},
                                baseline=base_ev, baseline_name=_baseline_name(baseline),
                                sources=_sources(queries, files, per_class, seed),
                                non_mated_sources=_sources(non_mated, nm_files, per_class, seed),
                                class_sample=_class_samples(gallery_samples, gallery_per_class),
                                notes=notes)
            result["report"] = str(path)
            _record_report(rec, path)
    cs, os_, vf = result["closed_set"], result["identification"], result["verification"]
    table = Table(title="evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("mated searches", f"{cs['queries']:,}")
    table.add_row("non-mated searches", f"{os_['non_mated_searches']:,}")
    for k, v in cs["top_k"].items():
        table.add_row(k.replace("top", "top-"), _pct(v))
    table.add_row("macro F1", _pct(cs["macro"]["f1"]))
    for r in sorted(os_["fnir_at_fpir"], key=lambda r: r["target_fpir"]):
        note = f" (T={r['threshold']:.3f})" if r["threshold"] is not None else f" ({r['reason']})"
        table.add_row(f"FNIR @ FPIR {r['target_fpir']:g}{note}", _pct(r["fnir"]))
    for r in sorted(vf["tar_at_far"], key=lambda r: r["far"]):
        table.add_row(f"TAR @ FAR {r['far']:g}" + (f" ({r['reason']})" if r["reason"] else ""),
                      _pct(r["tar"]))
    table.add_row("EER", _pct(vf["eer"]))
    if "baseline" in result:
        bs = result["baseline"]
        table.add_row(f"baseline ({bs['name']}): top-1 / macro F1",
                      f"{_pct(bs['closed_set']['top_k']['top1'])} / {_pct(bs['closed_set']['macro']['f1'])}")
    for p in (scaling or {}).get("points", []):
        table.add_row(f"gallery {p['gallery_size']:,}: top-1 / FNIR", f"{_pct(p['top1'])} / {_pct(p['fnir'])}")
    if report is not None:
        table.add_row("report", result["report"])
    _emit(result, as_json, table)
    if "groups" in result and not as_json:
        from .report_groups import groups_table

        _emit({}, False, groups_table(result["groups"]))
    misses = [r for r in result.get("mated_by_file", []) if r["rank1"] != r["class"]]
    if misses and not as_json:
        shown = Table(title=f"files not ranked first as their class ({len(misses):,} of "
                            f"{len(result['mated_by_file']):,}; first 20)")
        for col in ("file", "class", "rank-1 label", "rank of class"):
            shown.add_column(col)
        for r in misses[:20]:
            shown.add_row(r["file"], r["class"], str(r["rank1"]), str(r["rank"] or "> k"))
        _emit({}, False, shown)
