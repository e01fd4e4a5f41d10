"""The ``megaclass`` command line: demo, train, enroll, identify, verify, erase, calibrate, evaluate.

Every command takes paths for data, model and gallery, prints rich tables (or
JSON with ``--json``), and turns megaclass errors into a one-line message and
exit status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .cli_common import (
    FusionOpt,
    GalleryOpt,
    JsonOpt,
    KeyOpt,
    MilvusTokenOpt,
    ModelsOpt,
    QuietOpt,
    SamplesArg,
    SeedOpt,
    SkipBadOpt,
    _collect_samples,
    _emit,
    _fields_table,
    _labelled,
    _open_gallery,
    _recognizer,
    _use_milvus_token,
    console,
    err_console,
)
from .errors import ConfigError, InvalidInputError, MegaclassError
from .evaluate.open_set import DEFAULT_TARGET_FPIR

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="megaclass: recognition among millions of classes that keep growing after training.",
)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"megaclass {__version__}")
        raise typer.Exit(0)


@app.callback()
def _top(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
         milvus_token: MilvusTokenOpt = None) -> None:
    """megaclass: recognition among millions of classes that keep growing after training."""
    _use_milvus_token(milvus_token)


#: Python keyword arguments that error messages name, and the CLI flags that set them
_CLI_FLAGS = {"replace=True": "--replace", "allow_few=True": "--allow-few",
              "threshold=None": "--no-threshold"}


def _cli_message(exc: BaseException) -> str:
    """An error's message in CLI words (flags, not Python keyword arguments)."""
    import re

    text = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the data", str(exc))  # no object reprs
    for python, flag in _CLI_FLAGS.items():
        text = text.replace(python, flag)
    return text


@app.command()
def demo(out: Annotated[Path, typer.Option(help="Folder for report.json, scores.png, model and gallery.")] = Path("demo-output"),
         quick: Annotated[bool, typer.Option(help="A seconds-long miniature (for smoke tests).")] = False,
         augment: Annotated[str | None, typer.Option(help="Augment training batches: a preset (default, handwriting, faces), a JSON pipeline or a .json file (see `megaclass augment-preview`).")] = None,
         as_json: JsonOpt = False) -> None:
    """Train on 2,000 glyph classes, enroll 5,000 unseen ones, identify with rejection, report."""
    from .demo import DemoConfig, run_demo

    log = (lambda *a: None) if as_json else console.print
    config = DemoConfig.quick() if quick else DemoConfig()
    config.augment = augment
    report = run_demo(out, config, progress=not as_json, log=log)
    if as_json:
        _emit(report, True)
        return
    m, b, t, c = report["model"], report["raw_pixel_baseline"], report["timing"], report["config"]
    table = Table(title=f"megaclass demo: {c['enrolled']:,} unseen classes enrolled, "
                        f"{c['non_mated']:,} never-enrolled classes as non-mated")
    cols = [m, b] + ([report["reference_model"]] if report.get("reference_model") else [])
    table.add_column("metric")
    table.add_column(f"trained encoder ({c['train_steps']} steps)", justify="right")
    table.add_column("raw-pixel baseline", justify="right")
    if len(cols) == 3:
        table.add_column("shipped reference model", justify="right")

    def row(name: str, key: str, fmt: str = ".1%") -> None:
        table.add_row(name, *(format(col[key], fmt) if key in col else "–" for col in cols))

    row("top-1 (enrolled classes)", "top1")
    row("top-5 (enrolled classes)", "top5")
    row(f"FNIR @ FPIR {c['target_fpir']:.0%}, score rule (calibrated)", "fnir")
    row(f"FNIR @ FPIR {c['extra_fpir']:.0%}, score rule", "fnir_at_extra_fpir")
    row(f"FPIR on held-out non-mated, score rule (target {c['target_fpir']:.0%})", "fpir", ".2%")
    row(f"FNIR @ FPIR {c['target_fpir']:.0%}, cohort rule (the default from 1,000 classes)", "fnir_cohort")
    row(f"FNIR @ FPIR {c['extra_fpir']:.0%}, cohort rule", "fnir_at_extra_fpir_cohort")
    row("FPIR on held-out non-mated, cohort rule", "fpir_cohort", ".2%")
    row("threshold of the score rule", "threshold", ".3f")
    console.print(table)
    timing = Table(title="time")
    timing.add_column("step")
    timing.add_column("seconds", justify="right")
    timing.add_row(f"train ({c['train_classes']:,} classes, {t['train_images_per_second']:,.0f} img/s)",
                   f"{t['train_seconds']:.1f}")
    timing.add_row(f"enroll {c['enrolled']:,} new classes (embed + store), no retraining",
                   f"{t['enroll_seconds']:.1f}")
    timing.add_row("identify throughput (queries/s)", f"{t['search_queries_per_second']:,.0f}")
    timing.add_row("whole demo", f"{t['total_seconds']:.1f}")
    console.print(timing)
    console.print(f"report: {out / 'report.json'}   plot: {out / 'scores.png'}   "
                  f"HTML report: {out / report.get('html_report', 'report.html')}")


@app.command()
def train(ctx: typer.Context,
          model: Annotated[Path, typer.Option("--model", "-m", help="Output model directory.")],
          data: Annotated[str | None, typer.Argument(help="glyphs:START-END (built-in) or an image folder root/<class>/<image>; optional with --recipe.")] = None,
          recipe: Annotated[str | None, typer.Option(help="A named recipe (demo | reference): its data and options; options given here as well override it.")] = None,
          device: Annotated[str, typer.Option(help="auto (CUDA when available, else CPU) | cpu | cuda | cuda:N.")] = "auto",
          precision: Annotated[str, typer.Option(help="fp32 | bf16 (bfloat16 autocast of the encoder; slower on CPUs without bf16 units).")] = "fp32",
          compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the encoder.")] = False,
          head: Annotated[str, typer.Option(help="softmax | normface | cosface | arcface | partial_fc | adaptive | hierarchical | triplet (see README, 'Which head for a million classes?').")] = "cosface",
          epochs: int = 3,
          steps: Annotated[int | None, typer.Option(help="Total steps (overrides --epochs).")] = None,
          batch_size: int = 256,
          m_per_class: Annotated[int, typer.Option(help="Samples of each class in a batch.")] = 4,
          optimizer: Annotated[str | None, typer.Option(help="adamw | sgd (default adamw; with --freeze all, the head's tuned head-only optimizer and lr)")] = None,
          lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 3e-3 AdamW, 0.1 SGD).")] = None,
          scale: Annotated[float | None, typer.Option(help="Margin heads: logit scale s.")] = None,
          margin: Annotated[float | None, typer.Option(help="Margin heads: margin m.")] = None,
          dim: Annotated[int, typer.Option(help="Embedding dimension.")] = 128,
          size: Annotated[int, typer.Option(help="Input image side in pixels.")] = 32,
          channels: Annotated[int, typer.Option(help="Input channels: 1 (grayscale, handwriting contract) or 3 (RGB, photo contract).")] = 1,
          resize: Annotated[str | None, typer.Option(help="pad | crop | stretch (default: pad for 1 channel, crop for 3).")] = None,
          polarity: Annotated[str | None, typer.Option(help="auto (make ink light on dark) | none (default: auto for 1 channel, none for 3).")] = None,
          mean: Annotated[str | None, typer.Option(help="Input mean in pixel units, one value or one per channel (e.g. 127.5 or 123.7,116.3,103.5).")] = None,
          std: Annotated[str | None, typer.Option(help="Input std in pixel units, one value or one per channel.")] = None,
          samples_per_class: Annotated[int, typer.Option(help="Glyphs: drawings per class per epoch.")] = 32,
          checkpoint_dir: Annotated[Path | None, typer.Option(help="Where to write checkpoints.")] = None,
          checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0 = at the end only).")] = 0,
          resume: Annotated[bool, typer.Option(help="Resume from the latest checkpoint in --checkpoint-dir.")] = False,
          sample_rate: Annotated[float | None, typer.Option(help="partial_fc: share of negative class centres sampled per step.")] = None,
          centers_dtype: Annotated[str | None, typer.Option(help="partial_fc: storage of class centres (float32 | bfloat16 | float16).")] = None,
          taxonomy: Annotated[Path | None, typer.Option(help="hierarchical: JSON/CSV file mapping class -> group.")] = None,
          focal_gamma: Annotated[float, typer.Option(help="Focal loss gamma (0 = plain cross-entropy).")] = 0.0,
          class_balanced: Annotated[bool, typer.Option(help="Weight the loss by effective number of samples per class.")] = False,
          seed: int = 0,
          workers: Annotated[int | None, typer.Option(help="Data-loader worker processes (default: min(4, CPUs) for an image folder, 1 for glyphs).")] = None,
          skip_bad_files: SkipBadOpt = False,
          augment: Annotated[str | None, typer.Option(help="Augment training batches: none | default | handwriting | faces, a JSON pipeline or a .json file (see `megaclass augment-preview`).")] = None,
          backbone: Annotated[str | None, typer.Option(help="Architecture: 'resnet:widths=32,64,128;blocks=2;stem_stride=2' (built-in CNN; quote the ';') or timm:NAME (needs timm). Default: the built-in CNN, or the --init-from model's architecture.")] = None,
          backbone_weights: Annotated[Path | None, typer.Option(help="Local .safetensors file of backbone weights (nothing is downloaded).")] = None,
          init_from: Annotated[Path | None, typer.Option(help="Start from this megaclass model: tensors of matching name and shape are loaded, the rest initialised.")] = None,
          freeze: Annotated[str | None, typer.Option(help="Stages to freeze, comma-separated: stem, stage1..stageN, projection (timm: backbone, projection); all: train only the head.")] = None,
          pretrained_lr_scale: Annotated[float, typer.Option(help="Learning-rate factor for loaded (pretrained) tensors, e.g. 0.1.")] = 1.0,
          unfreeze_after: Annotated[int | None, typer.Option(help="Unfreeze the --freeze stages after this many steps.")] = None,
          compatible_with: Annotated[Path | None, typer.Option(help="Backward-compatible training (BCT): new embeddings stay searchable against templates of this old model (same --dim).")] = None,
          nproc: Annotated[int | None, typer.Option(help="Train on N local processes (torch.distributed; --head partial_fc, sharded by class; --batch-size is the global batch). Across machines use torchrun -m megaclass.train.")] = None,
          backend: Annotated[str, typer.Option(help="Distributed backend: auto (nccl when each process has a GPU, else gloo) | gloo | nccl.")] = "auto",
          dist_timeout: Annotated[float, typer.Option(help="Seconds a distributed collective waits for the other processes before the job stops with an error.")] = 300.0,
          as_json: JsonOpt = False) -> None:
    """Train an encoder on DATA and save it to --model (optionally fine-tuning --init-from)."""
    from .data.spec import open_source
    from .train import Trainer

    recipe_options: dict = {}
    if recipe is not None:
        data, samples_per_class, recipe_options = _apply_recipe(ctx, recipe, data, samples_per_class)
    elif data is None:
        raise ConfigError("give the training DATA (glyphs:START-END or a folder) or a --recipe")
    spec = _input_spec(channels, size, resize, polarity, mean, std)
    source = open_source(data, samples_per_class=samples_per_class, input_spec=spec,
                         skip_bad_files=skip_bad_files)
    options: dict[str, Any] = dict(head=head, epochs=epochs, steps=steps, batch_size=batch_size,
                      m_per_class=m_per_class, optimizer=optimizer, lr=lr, scale=scale,
                      margin=margin, dim=dim, seed=seed, num_workers=workers,
                      checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
                      checkpoint_every=checkpoint_every, resume=resume, progress=not as_json,
                      head_options={k: v for k, v in {"sample_rate": sample_rate, "dtype": centers_dtype,
                                                      "taxonomy": str(taxonomy) if taxonomy else None}.items()
                                    if v is not None},
                      focal_gamma=focal_gamma, class_balanced=class_balanced, augment=augment,
                      backbone=backbone, backbone_weights=str(backbone_weights) if backbone_weights else None,
                      init_from=str(init_from) if init_from else None, freeze=freeze or (),
                      pretrained_lr_scale=pretrained_lr_scale, unfreeze_after=unfreeze_after,
                      compatible_with=str(compatible_with) if compatible_with else None,
                      device=device, precision=precision, compile=compile_model)
    from .train.launch import LAUNCHED, plan_distributed

    options = {**options, **recipe_options}
    argv = sys.argv[sys.argv.index("train") + 1:] if "train" in sys.argv else []
    dist_ctx = plan_distributed(nproc, backend, dist_timeout, source, options, argv)
    if dist_ctx == LAUNCHED:
        return  # the workers trained; their rank 0 saved the model and printed the result
    if dist_ctx is not None:
        from .train.distributed_cli import train_on_rank

        return train_on_rank(dist_ctx, source, options, model, as_json)
    trainer = Trainer(source, **options)
    encoder = trainer.fit().encoder_
    encoder.save(model)
    reports = {k: r for k, r in (("backbone_weights", trainer.backbone_report_),
                                 ("init_from", trainer.init_report_)) if r is not None}
    result = {"model": str(model), "classes": source.num_classes, "steps": len(trainer.history_),
              "final_loss": trainer.history_[-1]["loss"] if trainer.history_ else None,
              "seconds": trainer.seconds_, "images_per_second": trainer.images_per_second_,
              "fingerprint": encoder.fingerprint()}
    result.update({k: r.to_dict() for k, r in reports.items()})
    if as_json:
        _emit(result, True)
    else:
        for r in reports.values():
            console.print(r.summary(), highlight=False, soft_wrap=True)
        console.print(f"saved {model} ({source.num_classes:,} classes, {result['steps']} steps, "
                      f"loss {result['final_loss']}, {trainer.images_per_second_:,.0f} img/s)")


def _apply_recipe(ctx: typer.Context, name: str, data: str | None, samples_per_class: int):
    """The recipe's data, drawings per class and Trainer options, minus what the command line set."""
    from .train.recipes import recipe as get_recipe

    r = get_recipe(name)

    def given(param: str) -> bool:
        # compared by name: typer >= 0.29 vendors click, so click.core.ParameterSource is
        # another enum than the one the context returns (every option then looked "given"
        # and the recipe's own options were silently dropped)
        source = ctx.get_parameter_source(param)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    options = {k: v for k, v in r.options.items() if not given(k)}
    if "checkpoint_every" in options and not given("checkpoint_dir"):
        options.pop("checkpoint_every")  # a recipe's checkpoint cadence needs a --checkpoint-dir
    return (data if data is not None else r.data,
            samples_per_class if given("samples_per_class") else r.samples_per_class, options)


def _input_spec(channels: int, size: int, resize: str | None, polarity: str | None,
                mean: str | None, std: str | None):
    """The InputSpec the train options describe (the preset of the channel count, then overrides)."""
    from .data.input_spec import InputSpec
    from .errors import ConfigError

    def values(flag: str, text: str | None):
        if text is None:
            return None
        try:
            return tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"{flag} takes numbers separated by commas, got {text!r}") from None

    if channels not in (1, 3):
        raise ConfigError(f"--channels must be 1 or 3, got {channels}")
    spec = InputSpec.preset("handwriting" if channels == 1 else "photo", size=size)
    changes = {"resize": resize, "polarity": polarity, "mean": values("--mean", mean),
               "std": values("--std", std)}
    return spec.with_(**{k: v for k, v in changes.items() if v is not None})


@app.command()
def enroll(model: ModelsOpt, gallery: GalleryOpt,
           label: Annotated[str | None, typer.Argument(help="Label of the new class.")] = None,
           samples: Annotated[list[str] | None, typer.Argument(help="Its samples: image files, folders, glyph:ID.")] = None,
           from_data: Annotated[str | None, typer.Option("--from", help="Enroll every class of a folder or glyphs:START-END spec.")] = None,
           per_class: Annotated[int, typer.Option(help="With --from glyphs: samples per class.")] = 5,
           replace: Annotated[bool, typer.Option(help="Replace a class that is already enrolled.")] = False,
           retain_samples: Annotated[bool, typer.Option(
               "--retain-samples", help="Also keep the samples in the gallery (encrypted with its key, if any) "
                                        "so `megaclass gallery reembed` can re-make templates with a new model.")] = False,
           fusion: FusionOpt = None,
           key_file: KeyOpt = None, seed: SeedOpt = 1, quiet: QuietOpt = False,
           skip_bad_files: SkipBadOpt = False, as_json: JsonOpt = False) -> None:
    """Enroll LABEL from SAMPLES, or every class of --from, into the gallery (no retraining)."""
    from .data.spec import parse_glyph_range
    from .fusion import FusedRecognizer
    from .fusion_gallery import is_ensemble
    from .progress import ItemProgress

    if retain_samples and (len(model) > 1 or is_ensemble(gallery)):  # before anything is created
        raise ConfigError("--retain-samples keeps samples to re-embed one model's gallery; "
                          "an ensemble (several -m) does not support it yet")
    if not from_data and (not label or not samples):  # before a new gallery is created
        raise InvalidInputError("give LABEL and SAMPLES, or --from DATA")
    rec = _recognizer(model, gallery, create=True, key=key_file, fusion=fusion)
    with rec:
        spec = rec.encoder.input_spec
        if from_data:
            from .data.folder import ImageFolderSource
            from .data.glyphs import GlyphSource

            ids = parse_glyph_range(from_data)
            source: GlyphSource | ImageFolderSource
            if ids is not None:
                source = GlyphSource(ids, samples_per_class=per_class, seed=seed, size=spec.size)
                items, n_classes = source.iter_classes(), source.num_classes  # rendered in chunks
            else:
                source = ImageFolderSource(Path(from_data), spec=spec, cache=False,
                                           skip_bad_files=skip_bad_files)
                items, n_classes = source.iter_classes(), source.num_classes  # streamed: bounded memory
            with ItemProgress(n_classes, "enroll", unit="classes", enabled=not (quiet or as_json)) as bar:
                n = rec.enroll_many(items, replace=replace, progress=bar.advance)
            if retain_samples and not isinstance(rec, FusedRecognizer):
                from .gallery.sample_sources import retain

                folder = source if isinstance(source, ImageFolderSource) else None
                kept = (source.iter_classes() if folder is None else
                        ((name, folder.class_paths(i)) for i, name in enumerate(folder.class_names)))
                retain(rec.gallery, kept)
            result: dict[str, Any] = {"classes": n_classes, "samples": n, "gallery_classes": len(rec)}
        else:
            assert label is not None and samples is not None  # checked above
            batch, names, _ = _collect_samples(samples, spec, seed)
            n = rec.enroll(label, batch, replace=replace)
            if retain_samples and not isinstance(rec, FusedRecognizer):
                from .gallery.sample_sources import retain

                retain(rec.gallery, [(label, [name if not name.startswith("glyph:") else batch[k]
                                              for k, name in enumerate(names)])])
            result = {"label": label, "samples": n, "gallery_classes": len(rec)}
    if as_json:
        _emit(result, True)
    else:
        console.print(f"enrolled {result.get('classes', 1):,} class(es) from {result['samples']:,} "
                      f"samples; gallery now holds {result['gallery_classes']:,} classes")


NoThresholdOpt = Annotated[bool, typer.Option(
    "--no-threshold", help="Candidates only: no accept/reject decision (the best candidate is the label). "
                           "Needed on a gallery that was never calibrated, unless --threshold is given.")]


def _threshold_choice(threshold: float | None, no_threshold: bool):
    """What identify/verify decide with: --threshold, --no-threshold (None), or the calibrated one."""
    from .recognizer import UNSET

    if no_threshold and threshold is not None:
        raise InvalidInputError("give --threshold or --no-threshold, not both")
    return None if no_threshold else (UNSET if threshold is None else threshold)


@app.command()
def identify(model: ModelsOpt, gallery: GalleryOpt, samples: SamplesArg,
             k: Annotated[int, typer.Option("-k", help="Candidates to list per sample.")] = 5,
             threshold: Annotated[float | None, typer.Option(help="Override the calibrated threshold.")] = None,
             no_threshold: NoThresholdOpt = False,
             key_file: KeyOpt = None, seed: SeedOpt = 2, as_json: JsonOpt = False) -> None:
    """Identify each sample among the enrolled classes (1:N); unknown below the threshold."""
    chosen = _threshold_choice(threshold, no_threshold)
    rec = _recognizer(model, gallery, threshold=threshold, key=key_file)
    with rec:
        thr = rec.decision_threshold(chosen)  # an uncalibrated gallery fails here, before embedding
        batch, names, classes = _collect_samples(samples, rec.encoder.input_spec, seed)
        decisions = rec.identify(batch, k=k, threshold=thr)
    rows = []
    for name, folder_class, d in zip(names, classes, decisions, strict=True):
        row = {"sample": name, "label": d.label, "score": d.score,
               "candidates": [{"label": m.label, "score": m.score} for m in d.candidates]}
        if folder_class is not None:
            row["folder_class"] = folder_class
        rows.append(row)
    result: dict[str, Any] = {"threshold": thr, "results": rows}
    table = Table(title=f"identify (threshold {'none' if thr is None else f'{thr:.3f}'})")
    for col in ("sample", "decision", "score", "candidates"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["sample"], r["label"] or "[red]unknown[/red]", f"{r['score']:.3f}",
                      ", ".join(f"{c['label']} {c['score']:.2f}" for c in r["candidates"]))
    checked = [r for r in rows if "folder_class" in r]
    if checked:  # nested class folders: say how often the decision names the file's folder
        result["folder_check"] = {
            "queries": len(checked),
            "rank1_is_folder_class": sum(bool(r["candidates"]) and r["candidates"][0]["label"] == r["folder_class"]
                                         for r in checked),
            "accepted_as_folder_class": sum(r["label"] == r["folder_class"] for r in checked)}
        table.caption = (f"{result['folder_check']['accepted_as_folder_class']} of {len(checked)} files "
                         f"identified as their class folder (rank 1: "
                         f"{result['folder_check']['rank1_is_folder_class']})")
    _emit(result, as_json, table)


@app.command()
def verify(model: ModelsOpt, gallery: GalleryOpt,
           label: Annotated[str, typer.Argument(help="The claimed class.")],
           sample: Annotated[str, typer.Argument(help="An image file, glyph:ID, or a folder (flat or root/<class>/<image>): each image is verified.")],
           threshold: Annotated[float | None, typer.Option(help="Override the calibrated threshold.")] = None,
           no_threshold: NoThresholdOpt = False,
           key_file: KeyOpt = None, seed: SeedOpt = 2, as_json: JsonOpt = False) -> None:
    """Verify that SAMPLE belongs to LABEL (1:1). Exit 0 if accepted (every image of a folder), 1 if not."""
    chosen = _threshold_choice(threshold, no_threshold)
    rec = _recognizer(model, gallery, threshold=threshold, key=key_file)
    with rec:
        thr = rec.decision_threshold(chosen)  # an uncalibrated gallery fails here, before embedding
        batch, names, _ = _collect_samples([sample], rec.encoder.input_spec, seed)
        verdicts = [rec.verify(batch[i : i + 1], label, threshold=thr) for i in range(len(batch))]
    accepted = all(v.accepted for v in verdicts)
    if len(verdicts) == 1:
        v = verdicts[0]
        result = {"label": v.label, "accepted": v.accepted, "score": v.score, "threshold": v.threshold,
                  "sample": names[0]}
    else:
        result = {"label": label, "accepted": accepted, "threshold": verdicts[0].threshold,
                  "results": [{"sample": n, "accepted": v.accepted, "score": v.score}
                              for n, v in zip(names, verdicts, strict=True)]}
    if as_json:
        _emit(result, True)
    else:
        for n, v in zip(names, verdicts, strict=True):
            verdict = "[green]accepted[/green]" if v.accepted else "[red]rejected[/red]"
            where = f" {n}" if len(verdicts) > 1 else ""
            console.print(f"{label}{where}: {verdict} (score {v.score:.3f}, threshold {v.threshold})")
    raise typer.Exit(0 if accepted else 1)


@app.command()
def erase(gallery: GalleryOpt, label: Annotated[str, typer.Argument(help="Class to remove.")],
          key_file: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Erase a class and all its templates from the gallery."""
    with _open_gallery(gallery, key_file, ensemble_ok=True) as g:  # an ensemble: every member
        n = g.erase(label)
        left = len(g)
    if as_json:
        _emit({"label": label, "templates_removed": n, "gallery_classes": left}, True)
    else:
        console.print(f"erased {label} ({n} templates); {left:,} classes left")


@app.command()
def calibrate(model: ModelsOpt, gallery: GalleryOpt,
              non_mated: Annotated[str, typer.Option(help="Classes NOT enrolled: glyphs:START-END or a folder.")],
              target_fpir: Annotated[float, typer.Option(help="Target false-positive identification rate.")] = DEFAULT_TARGET_FPIR,
              per_class: Annotated[int, typer.Option(help="With glyphs: searches per class.")] = 2,
              allow_few: Annotated[bool, typer.Option(
                  "--allow-few", help="Accept fewer non-mated searches than 10/FPIR (with a warning).")] = False,
              fusion: Annotated[str | None, typer.Option("--fusion", help=(
                  "Ensembles (several -m): calibrate for this fusion rule, RULE[:W1,W2,...] (zsum | "
                  "minmax | borda, optional weights in -m order), and store it with the new statistics "
                  "and threshold (default: the ensemble's stored rule)."), show_default=False)] = None,
              decision: Annotated[str | None, typer.Option("--decision", help=(
                  "What the threshold applies to: 'score' (the best class's cosine) or 'cohort[:N]' "
                  "(the best score minus the mean of the next N classes' scores, N=20 by default; "
                  "lower FNIR at the same FPIR on large galleries, see README). Stored with the "
                  "threshold (default: the rule chosen at an earlier calibration, else cohort:20 for "
                  "galleries of 1,000 classes or more and score below)."),
                  show_default=False)] = None,
              key_file: KeyOpt = None, seed: SeedOpt = 3, as_json: JsonOpt = False) -> None:
    """Set the gallery's threshold for a target FPIR from non-mated searches (at least 10/FPIR)."""
    from .decisions import DecisionRule
    from .fusion import FusedRecognizer

    rule_given = None if decision is None else DecisionRule.parse(decision)  # before loading anything
    rec = _recognizer(model, gallery, key=key_file, fusion=fusion, change_fusion=True)
    with rec:
        if rule_given is not None and rule_given.cohort and isinstance(rec, FusedRecognizer):
            raise ConfigError(f"--decision {decision}: an ensemble decides on its fused score "
                              "(--fusion), not on a cohort rule")
        images, _ = _labelled(non_mated, rec.encoder.input_spec, per_class, seed)
        rule = spec = None
        if isinstance(rec, FusedRecognizer):
            cal = rec.calibrate(images, target_fpir, allow_few=allow_few)
            rule = rec.fusion
        else:
            cal = rec.calibrate(images, target_fpir, allow_few=allow_few, decision=decision)
            spec = rec.decision.spec
    result = cal.to_dict() if rule is None else {**cal.to_dict(), "fusion": rule}
    if spec is not None:
        result["decision"] = spec
    if as_json:
        _emit(result, True)
    else:
        lo, hi = cal.fpir_ci95
        fused = f" (fused: {rule})" if rule is not None else ("" if spec == "score" else f" ({spec})")
        console.print(f"threshold {cal.threshold:.4f}{fused}: FPIR {cal.achieved_fpir:.4f} on "
                      f"{cal.n_non_mated:,} non-mated searches (95% CI {lo:.4f}-{hi:.4f})")


@app.command()
def stats(gallery: GalleryOpt, key_file: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Classes, templates, dimension, index and disk size of a gallery."""
    with _open_gallery(gallery, key_file, ensemble_ok=True) as g:
        info = g.stats()
        info["threshold"] = g.get_setting("threshold")
        if info["threshold"] is not None and not g.get_setting("ensemble"):
            info["decision"] = g.get_setting("decision") or "score"
    _emit(info, as_json, _fields_table(str(gallery), info, justify="right"))


# Commands that live beside their area (serve/, bench/, ...): each such module defines
# ``register(app)``. Listed here so that the CLI stays one place to look.
_COMMAND_MODULES = ("megaclass.evaluate.commands", "megaclass.heads.commands", "megaclass.train.commands",
                    "megaclass.data.commands",
                    "megaclass.bench.commands", "megaclass.bench.fusion", "megaclass.serve.commands",
                    "megaclass.gallery.commands", "megaclass.models.commands")


def _register_area_commands() -> None:
    import importlib
    import importlib.util

    for name in _COMMAND_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # the area's package does not exist (yet)
            found = False
        if found:
            importlib.import_module(name).register(app)


def main() -> None:
    """Console-script entry point: megaclass errors become one line on stderr + exit 2."""
    _register_area_commands()
    try:
        app(prog_name="megaclass")  # standalone: handles --help, usage errors and exit codes
    except (MegaclassError, FileNotFoundError, PermissionError) as exc:
        message = _cli_message(exc)
        if "--json" in sys.argv[1:]:  # machine readers get the error as JSON on stdout too
            typer.echo(json.dumps({"error": type(exc).__name__, "message": message}))
        else:
            err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
