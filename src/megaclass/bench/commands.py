"""CLI of the benchmark area: the ``megaclass bench`` sub-app (``bench heads``, ...).

Other areas add their benchmarks to :data:`bench_app` (e.g. ``bench gallery``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..cli_common import JsonOpt, _emit, console
from ..errors import ConfigError
from . import BENCH_MODEL
from .gallery import SYSTEMS

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: ratios side by side, JSON + PNG.")


def register(app: typer.Typer) -> None:
    """Add the ``bench`` sub-app to the ``megaclass`` app."""
    app.add_typer(bench_app, name="bench")


def _counts(text: str) -> list[int]:
    try:
        vals = [int(float(x.strip().lower().replace("_", "").replace("k", "e3").replace("m", "e6")))
                for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"bad --sizes {text!r}: use e.g. 1k,10k,100k,1m") from None
    if not vals or min(vals) < 2:
        raise ConfigError(f"--sizes needs class counts >= 2, got {text!r}")
    return vals


@bench_app.command("heads")
def heads(out: Annotated[Path, typer.Option(help="Folder for heads.json and heads.png.")] = Path("bench-output/heads"),
          sizes: Annotated[str, typer.Option(help="Class counts, e.g. 1k,10k,100k,1m.")] = "1k,10k,100k,1m",
          head: Annotated[list[str], typer.Option("--head", help="Heads to compare (repeat); softmax is the baseline.")] = ["softmax", "cosface", "partial_fc", "adaptive", "hierarchical"],
          dim: Annotated[int, typer.Option(help="Embedding dimension D.")] = 256,
          batch: Annotated[int, typer.Option(help="Batch size B.")] = 256,
          steps: Annotated[int, typer.Option(help="Timed steps per head (after warm-up).")] = 10,
          warmup: Annotated[int, typer.Option(help="Untimed warm-up steps.")] = 2,
          sample_rate: Annotated[float, typer.Option(help="Partial FC sample rate.")] = 0.1,
          acc_sizes: Annotated[str, typer.Option(help="Class counts of the accuracy comparison (each head swept, then trained to a plateau on frozen reference-model features); 'none' to skip.")] = "10k",
          quick: Annotated[bool, typer.Option(help="A seconds-long accuracy protocol (200 classes, tiny sweep) for tests.")] = False,
          model: Annotated[str, typer.Option(help="Frozen encoder of the accuracy comparison (default: reference-v1, the 128-d model the recorded numbers used).")] = BENCH_MODEL,
          ten_million: Annotated[bool, typer.Option(help="Also train Partial FC at 10M classes x 128 (bfloat16).")] = True,
          threads: Annotated[int, typer.Option(help="torch threads per measurement process (1 is stable on a shared box).")] = 1,
          timeout: Annotated[float, typer.Option(help="Seconds allowed per measurement subprocess.")] = 1800,
          nproc: Annotated[int | None, typer.Option(help="Instead: Partial FC on N processes vs 1, per process (default size 2m; see bench/heads_distributed.py).")] = None,
          as_json: JsonOpt = False) -> None:
    """Step time, peak RSS, state size and top-1 of each head vs C; ratios to full softmax."""
    if nproc is not None:  # issue 18: the sharded head, its own module and table
        from .heads_distributed import heads_distributed_cli

        return heads_distributed_cli(out, None if sizes == "1k,10k,100k,1m" else _counts(sizes), dim=dim,
                                     batch=batch, nproc=nproc, steps=steps, warmup=warmup,
                                     sample_rate=sample_rate, threads=threads, timeout=timeout, as_json=as_json)
    from .heads import format_bytes, run_heads_bench

    if not 0 < sample_rate <= 1:
        raise ConfigError(f"--sample-rate must be in (0, 1], got {sample_rate}")
    log = None if as_json else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
    accs = [] if acc_sizes.strip().lower() in ("", "0", "none") else _counts(acc_sizes)
    report = run_heads_bench(out, sizes=_counts(sizes), heads=head, dim=dim, batch=batch, steps=steps,
                             warmup=warmup, acc_sizes=[200] if quick and accs else accs, quick=quick,
                             model=model, ten_million=ten_million, sample_rate=sample_rate, timeout=timeout,
                             threads=threads, log=log)
    if as_json:
        _emit(report, True)
        return
    table = Table(title=f"heads: head-only steps, B={batch}, {steps} steps (median); ratios vs softmax, same run")
    for col in ("C", "D", "head", "step ms", "speed-up", "peak RSS", "RSS vs softmax", "state", "RSS/state", "top-1"):
        table.add_column(col, justify="left" if col == "head" else "right")
    for r in report["results"]:
        if "median_step_s" not in r:
            table.add_row(f"{r['classes']:,}", str(r["dim"]), r["head"], r.get("error", "-")[:60], *["-"] * 6)
            continue
        table.add_row(f"{r['classes']:,}", str(r["dim"]), r["head"] + (" (bf16)" if r.get("dtype") else ""),
                      f"{r['median_step_s'] * 1000:,.1f}",
                      f"{r['speedup_vs_softmax']:.1f}x" if "speedup_vs_softmax" in r else "-",
                      format_bytes(r["peak_rss_bytes"]),
                      f"{r['peak_rss_vs_softmax']:.2f}x" if "peak_rss_vs_softmax" in r else "-",
                      format_bytes(r["state_bytes"]), f"{r['peak_rss_over_state']:.2f}",
                      f"{r['top1']:.1%}" if "top1" in r else "-")
    console.print(table)
    if report.get("accuracy"):
        _print_comparison(report["accuracy"])
    for key, t in report["targets"].items():
        if isinstance(t, dict):
            console.print(f"target {key}: {t['target']}  measured: {t['measured']}")
    console.print(f"wrote {out / 'heads.json'} and {out / 'heads.png'}")


def _print_comparison(comparison: dict) -> None:
    """The accuracy comparison: each head's swept settings, converged test top-1, budgets, time to a bar."""
    table = Table(title="heads trained to a validation plateau on frozen features (settings from each head's sweep)")
    budgets = [f"val top-1 @{int(b)} s" for b in comparison["config"]["budgets_s"]]
    for col in ("C", "head", "optimizer, lr, options", "test top-1", "top-5", "gap", "stopped", *budgets,
                "s to bar"):
        table.add_column(col, justify="left" if col in ("head", "optimizer, lr, options", "stopped") else "right")
    for r in comparison["summary"]:
        st = r["settings"] or {}
        vals = [r[k] for k in r if k.startswith("val_top1_at_")]
        table.add_row(f"{r['classes']:,}", r["head"], f"{st.get('optimizer')} {st.get('lr')} {st.get('head_options') or ''}",
                      f"{r['test_top1']:.1%}", f"{r['test_top5']:.1%}", f"{r['gap_to_best_points']:.1f}",
                      r["stopped_by"], *[f"{v:.1%}" if v is not None else "-" for v in vals],
                      f"{r['seconds_to_bar']:.0f}" if r["seconds_to_bar"] is not None else "never")
    for b in comparison.get("class_mean", []):
        table.add_row(f"{b['classes']:,}", "class mean", "no training (gallery)", f"{b['test_top1']:.1%}",
                      f"{b['test_top5']:.1%}", "", f"enrol {b['enrol_cpu_seconds']:.1f} s", *[""] * len(budgets), "")
    console.print(table)


def _ints(text: str, flag: str, sep: str = ",") -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.lower().split(sep) if v.strip())
    except ValueError:
        raise ConfigError(f"bad {flag} {text!r}") from None
    if not vals or min(vals) < 1:
        raise ConfigError(f"bad {flag} {text!r}: positive integers expected")
    return vals


@bench_app.command("data")
def data(out: Annotated[Path, typer.Option(help="Folder for data_bench.json and .png.")] = Path("bench-output/data"),
         data_dir: Annotated[Path | None, typer.Option("--data", help="Generate (or reuse) the image folders here (default: a temporary folder, removed).")] = None,
         images: Annotated[int, typer.Option(help="Colour JPEGs to generate.")] = 1000,
         classes: Annotated[int, typer.Option(help="Classes (for the JPEGs and the PNGs).")] = 100,
         jpeg_size: Annotated[str, typer.Option(help="JPEG width x height.")] = "640x480",
         size: Annotated[int, typer.Option(help="Model input side for the JPEGs (3 channels).")] = 112,
         png_images: Annotated[int, typer.Option(help="Glyph PNGs to generate (1 channel).")] = 2000,
         png_size: Annotated[int, typer.Option(help="PNG side = model input side (1 channel).")] = 32,
         epochs: Annotated[int, typer.Option(help="Epochs per arm (the steady rate is from epoch 2 on).")] = 3,
         rounds: Annotated[int, typer.Option(help="Run the arms this many times, order reversed each round (ABC CBA).")] = 1,
         steps: Annotated[int | None, typer.Option(help="Total steps per arm (overrides --epochs).")] = None,
         batch: Annotated[int, typer.Option(help="Batch size (every arm).")] = 128,
         widths: Annotated[str, typer.Option(help="Encoder stage widths (every arm).")] = "16,32,64",
         threads: Annotated[int, typer.Option(help="torch threads of the training process (0 = torch's default; 1 is stable on a shared box).")] = 1,
         as_json: JsonOpt = False) -> None:
    """Training images/s from a folder (cached, uncached) vs the same images in memory."""
    from .data import DataBenchConfig, run_data_bench

    jpeg = _ints(jpeg_size, "--jpeg-size", "x")
    if len(jpeg) != 2:
        raise ConfigError(f"--jpeg-size takes WIDTHxHEIGHT, got {jpeg_size!r}")
    cfg = DataBenchConfig(images=images, classes=classes, jpeg_size=(jpeg[0], jpeg[1]),
                          size=size, png_images=png_images, png_size=png_size, epochs=epochs, rounds=rounds, steps=steps,
                          batch=batch, widths=_ints(widths, "--widths"), threads=threads or None)
    log = None if as_json else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
    report = run_data_bench(out, cfg, data=data_dir, log=log)
    if as_json:
        _emit(report, True)
        return
    load = report["machine"]
    table = Table(title=f"bench data: training images/s, same model and batch ({cfg.batch}) per arm; "
                        f"{load['cpus']} CPUs, {load['torch_threads']} torch thread(s), "
                        f"load average {load['load_average_before'][0]:.1f} at start")
    for col in ("data", "arm", "workers", "cache", "epoch 1 img/s", "steady img/s", "steady vs memory",
                "epoch 1 vs memory"):
        table.add_column(col, justify="left" if col in ("data", "arm") else "right")
    for d in report["datasets"]:
        spec = d["input"]
        label = f"{d['name']} {d['images']:,} x {spec['channels']}ch {spec['size']}px"
        for r in d["arms"]:
            table.add_row(label, r["arm"], str(r["workers"]),
                          r["cache_mode"] or "-", f"{r['first_epoch_images_per_s']:,.0f}",
                          f"{r['steady_images_per_s']:,.0f}" if r["steady_images_per_s"] else "-",
                          f"{r['steady_vs_memory']:.2f}x" if r["steady_vs_memory"] else "-",
                          f"{r['first_epoch_vs_memory']:.2f}x" if r["first_epoch_vs_memory"] else "-")
            label = ""
    console.print(table)
    for d in report["datasets"]:
        v = d["verify_fill"]
        console.print(f"{d['name']}: verify + fill cache at construction (default ImageFolderSource): "
                      f"{v['seconds']:.1f} s, {v['images_per_s']:,.0f} images/s, {v['workers']} worker(s)")
    console.print(f"wrote {out / 'data_bench.json'} and {out / 'data_bench.png'}")


_SYSTEMS_HELP = f"Systems to compare (repeat): {', '.join(SYSTEMS)}."


@bench_app.command("gallery")
def gallery(out: Annotated[Path, typer.Option(help="Folder for gallery_bench.json and .png.")] = Path("bench-output/gallery"),
            classes: Annotated[str, typer.Option(help="Enrolled classes, e.g. 100k or 1m.")] = "100k",
            data: Annotated[str, typer.Option(help="embeddings: glyph classes embedded by a trained encoder (real data); random: clustered random vectors (stress test).")] = "embeddings",
            model: Annotated[str | None, typer.Option("--model", "-m", help="Encoder for --data embeddings (default: the shipped reference-v1, the 128-d model the recorded numbers used; without it, one trained once with the demo's recipe and cached).")] = None,
            cache: Annotated[Path, typer.Option(help="Where the benchmark's model and embeddings are cached (memory-mapped, reused).")] = Path("bench-output/gallery-data"),
            dim: Annotated[int, typer.Option(help="Vector dimension D (--data random; embeddings have the model's).")] = 256,
            templates: Annotated[int, typer.Option(help="Templates per class.")] = 2,
            queries: Annotated[int, typer.Option(help="Mated queries for recall and batch throughput.")] = 1000,
            single: Annotated[int, typer.Option(help="Single-query latency samples.")] = 300,
            system: Annotated[list[str], typer.Option("--system", help=_SYSTEMS_HELP)] = list(SYSTEMS),
            index: Annotated[str, typer.Option(help="megaclass's index spec (auto, Flat, IVF4096,Flat, HNSW32, ...); raw FAISS mirrors it.")] = "auto",
            timeout: Annotated[float, typer.Option(help="Seconds per system; slower ones are reported as timed out, with how far they got.")] = 3600.0,
            peer_timeout: Annotated[float | None, typer.Option(help="Seconds for hnswlib, usearch, Milvus Lite and LanceDB (default: --timeout).")] = None,
            as_json: JsonOpt = False) -> None:
    """The gallery vs raw FAISS, numpy brute force, hnswlib, usearch and Milvus Lite, at equal recall."""
    from .gallery import GalleryBenchConfig, run_bench

    unknown = set(system) - set(SYSTEMS)
    if unknown:
        raise ConfigError(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    cfg = GalleryBenchConfig(classes=_counts(classes)[0], dim=dim, templates=templates,
                             queries=queries, single=single, index=index, timeout=timeout,
                             peer_timeout=peer_timeout, data=data, model=model, cache=str(cache))
    log = (lambda *a: None) if as_json else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
    report = run_bench(cfg, out, systems=tuple(system), log=log)
    if as_json:
        _emit(report, True)
        return
    res = report["results"]
    base = res.get("faiss", {}).get("p50_ms")
    table = Table(title=f"gallery bench ({data}): {cfg.classes:,} classes x {templates} templates, "
                        f"D={report['config']['dim']}")
    for col in ("system", "index", "recall@1", "accuracy", "p50 ms", "p99 ms", "vs raw FAISS", "batch q/s",
                "enroll tpl/s", "open s", "+RSS MiB", "disk MiB"):
        table.add_column(col, justify="right")
    for name, r in res.items():
        if "skipped" in r:
            table.add_row(name, "skipped", r["skipped"][:40], *[""] * 9)
            continue
        ratio = f"{r['p50_ms'] / base:.2f}x" if base else "-"
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "-"
        table.add_row(name, r["index"], f"{r['recall_at_1']:.3f}", acc, f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                      ratio, f"{r['batch_qps']:,.0f}", f"{r['enroll_templates_per_s']:,.0f}",
                      f"{r['open_s']:.2f}", f"{r['rss_over_data_mb']:,.0f}", f"{r['disk_mb']:,.0f}")
    console.print(table)
    mc = res.get("megaclass", {})
    if "recall_reported" in mc:
        console.print(f"megaclass left to its own tuning ({mc['tuned_by']}, {mc['own_knobs']}): reported "
                      f"recall@1 {mc['recall_reported']} (95 % {mc['reported_ci95']}), measured on these "
                      f"queries {mc['recall_at_own_knobs']:.3f}; accuracy is against the true class "
                      f"(exact search: {mc.get('exact_accuracy', float('nan')):.3f})")
    if after := mc.get("after_observed"):
        console.print(f"after its recall monitor observed searches (probes calibrated to "
                      f"{after['calibrated_to']}, {after['own_knobs']}): reported "
                      f"{after['recall_reported']} (95 % {after['reported_ci95']}), measured on "
                      f"{after['held_out_queries']} other queries {after['recall_held_out']:.3f}, "
                      f"p50 {after['p50_ms']:.2f} ms")
    console.print(f"wrote {out / 'gallery_bench.json'} and {out / 'gallery_bench.png'}")


@bench_app.command("digits")
def digits(model: Annotated[str, typer.Option("--model", "-m", help="Model directory.")],
           trials: Annotated[int, typer.Option(help="Random few-shot trials.")] = 200,
           shots: Annotated[list[int], typer.Option("--shots", help="Samples enrolled per digit (repeat).")] = [1, 5],
           seed: int = 0, as_json: JsonOpt = False) -> None:
    """Few-shot identification of real handwritten digits (scikit-learn's bundled set) vs raw pixels."""
    from ..evaluate.digits import one_shot_digits
    from ..models import load_encoder

    encoder = load_encoder(model)
    results = [one_shot_digits(encoder, trials=trials, shots=s, seed=seed) for s in shots]
    if as_json:
        _emit({"model": model, "results": results}, True)
        return
    table = Table(title=f"real handwritten digits ({results[0]['digits']:,}, scikit-learn): top-1 among 10, "
                        f"{trials} trials")
    for col in ("shots per digit", "model", "raw pixels", "model - pixels"):
        table.add_column(col, justify="right")
    for r in results:
        m, b = r["model"], r["baseline"]
        table.add_row(str(r["shots"]), f"{m['mean']:.1%} ± {m['std']:.1%}", f"{b['mean']:.1%} ± {b['std']:.1%}",
                      f"{m['mean'] - b['mean']:+.1%}")
    console.print(table)


@bench_app.command("recipe")
def recipe_bench(out: Annotated[Path, typer.Option(help="Folder for recipe_bench.json.")] = Path("bench-output/recipe"),
                 base: Annotated[str, typer.Option(help="The recipe the variants change (demo | reference | reference-v1).")] = "demo",
                 variant: Annotated[list[str] | None, typer.Option("--variant", help="Variants to run (repeat; default: all but the head comparison's 'head NAME, 10k' / 'head NAME, 100k', run by name).")] = None,
                 steps: Annotated[int | None, typer.Option(help="Training steps of every variant (default: the base recipe's).")] = None,
                 enrolled: Annotated[int, typer.Option(help="Unseen classes enrolled in the scoring protocol.")] = 5000,
                 threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")] = None,
                 fresh: Annotated[bool, typer.Option(help="Ignore variants measured by an earlier run.")] = False,
                 curve: Annotated[bool, typer.Option(help="Also score the ten checkpoints along each run (accuracy vs training time).")] = False,
                 as_json: JsonOpt = False) -> None:
    """Each training change side by side: images/s (ratio to base) and unseen-class accuracy."""
    from .recipe import run_recipe_bench

    log = (lambda *a: None) if as_json else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
    report = run_recipe_bench(out, base=base, variants=variant, steps=steps, enrolled=enrolled,
                              threads=threads, resume=not fresh, curve=curve, log=log)
    if as_json:
        _emit(dict(report), True)
        return
    s = report["settings"]
    table = Table(title=f"recipe '{s['base']}', {s['steps']} steps each; {s['enrolled']:,} unseen classes")
    for col in ("variant", "img/s", "vs base", "top-1", "top-5", "FNIR@FPIR1%", "FNIR@FPIR10%"):
        table.add_column(col, justify="right")
    for r in report["rows"]:
        acc = [f"{r[k]:.1%}" if k in r else "(speed only)" for k in ("top1", "top5", "fnir", "fnir_at_extra_fpir")]
        table.add_row(r["variant"], f"{r['images_per_second']:,.0f}", f"{r['speed_vs_base']:.2f}x", *acc)
    console.print(table)


@bench_app.command("growth")
def growth(out: Annotated[Path, typer.Option(help="Folder for growth.json and growth.png.")] = Path("bench-output/growth"),
           base_classes: Annotated[int, typer.Option(help="Classes of the base model (N0).")] = 100,
           rounds: Annotated[int, typer.Option(help="Update rounds.")] = 10,
           classes_per_round: Annotated[int, typer.Option(help="New classes per round (N).")] = 20,
           samples_per_class: Annotated[int, typer.Option(help="Samples of each new class (few-shot).")] = 5,
           strategies: Annotated[str, typer.Option(help="Comma-separated: enroll,imprint,finetune,retrain.")] = "enroll,imprint,finetune,retrain",
           base_steps: Annotated[int, typer.Option(help="Training steps of the base model (retrain scales them with its data).")] = 150,
           finetune_steps: Annotated[int, typer.Option(help="finetune: steps per round.")] = 25,
           retrain_budget: Annotated[float, typer.Option(help="retrain: steps as a multiple of the base recipe's epochs.")] = 1.0,
           compat: Annotated[bool, typer.Option(help="Also compare a model upgrade with and without BCT (cross-model top-1).")] = False,
           threads: Annotated[int, typer.Option(help="torch threads (1 is stable on a shared box).")] = 1,
           as_json: JsonOpt = False) -> None:
    """Rounds of new classes per update strategy: forgetting, new-class accuracy, update cost."""
    from ..bench.heads import format_bytes
    from .growth import GrowthBenchConfig, run_growth_bench

    cfg = GrowthBenchConfig(base_classes=base_classes, rounds=rounds, classes_per_round=classes_per_round,
                            samples_per_class=samples_per_class, base_steps=base_steps,
                            finetune_steps=finetune_steps, retrain_budget=retrain_budget, compat=compat,
                            threads=threads,
                            strategies=tuple(s.strip() for s in strategies.split(",") if s.strip()))
    log = None if as_json else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
    report = run_growth_bench(out, cfg, log=log)
    if as_json:
        _emit(report, True)
        return
    def pct(v) -> str:
        return "-" if v is None else f"{v:.1%}"

    summary = report.get("summary", {})
    if summary:
        table = Table(title=f"bench growth: {cfg.base_classes} base classes + {cfg.rounds} rounds x "
                            f"{cfg.classes_per_round} new ({cfg.samples_per_class} samples each); last round; "
                            "times are ratios to enroll in the same run")
        for col in ("strategy", "top-1 old", "top-1 new", "top-1 base", "top-1 all", "FNIR@FPIR1% all",
                    "update s (total)", "vs enroll", "peak RSS", "gallery classes"):
            table.add_column(col, justify="left" if col == "strategy" else "right")
        for name, s in summary.items():
            f = s["final"]
            table.add_row(name, pct(f["old"]["top1"]), pct(f["new"]["top1"]), pct(f["base"]["top1"]),
                          pct(f["all"]["top1"]), pct(f["all"]["fnir"]), f"{s['total_update_seconds']:,.1f}",
                          f"{s['total_time_vs_enroll']:,.0f}x" if "total_time_vs_enroll" in s else "-",
                          format_bytes(s["max_peak_rss_bytes"]), f"{s['gallery_classes']:,}")
        console.print(table)
    if "compat" in report:
        table = Table(title=f"model upgrade: {report['compat']['unseen_classes']} unseen classes; "
                            "query model vs gallery (template) model")
        for col in ("query model", "gallery model", "top-1", "FNIR@FPIR1%"):
            table.add_column(col, justify="right")
        for p in report["compat"]["pairs"]:
            table.add_row(p["query_model"], p["gallery_model"], pct(p["top1"]), pct(p["fnir"]))
        console.print(table)
    console.print(f"wrote {out / 'growth.json'}" + (f" and {out / 'growth.png'}" if summary else ""))
