"""The decoded-image cache, worker decoding, --skip-bad-files and `bench data` (issue 13 parts 2, 7)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from megaclass.data.cache import ImageCache, memory_budget
from megaclass.data.folder import ImageFolderSource
from megaclass.data.images import load_image
from megaclass.data.input_spec import InputSpec
from megaclass.errors import ConfigError, CorruptImageError
from megaclass.train import Trainer
from test_cli import run  # the CLI as a user runs it

SPEC = InputSpec.preset("photo", size=16)


def photo(seed: int, w: int = 40, h: int = 30) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    img = ramp * rng.random(3, dtype=np.float32) + rng.normal(0, 20, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_folder(root: Path, classes: int = 3, per_class: int = 4, ext: str = "jpg") -> Path:
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo(c * 100 + i).save(root / f"c{c}" / f"{i}.{ext}")
    return root


def items(src) -> torch.Tensor:
    return torch.stack([src[i][0] for i in range(len(src))])


def test_cache_hit_equals_a_fresh_decode(tmp_path):
    root = make_folder(tmp_path / "data")
    src = ImageFolderSource(root, spec=SPEC)  # cache on by default, filled by verification
    assert src.cache.mode == "memory" and src.cache.filled_count == len(src) == 12
    first, again = items(src), items(src)
    fresh = items(ImageFolderSource(root, spec=SPEC, cache=False))
    assert first.dtype == torch.float32 and first.shape == (12, 3, 16, 16)
    assert torch.equal(first, again) and torch.equal(first, fresh)
    exact = torch.stack([load_image(p, spec=SPEC) for p in src.paths])
    assert (first - exact).abs().max() <= 0.5 / 255 + 1e-6  # only uint8 rounding
    batch = src.__getitems__([3, 0, 3])
    assert torch.equal(batch[0][0], first[3]) and [y for _, y in batch] == [0, 0, 0]


def test_memmap_file_when_memory_budget_is_tiny_and_reused(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    monkeypatch.setenv("MEGACLASS_CACHE_DIR", str(tmp_path / "cachedir"))
    src = ImageFolderSource(root, spec=SPEC, cache_memory=1)
    assert src.cache.mode == "file" and src.cache.path.parent == tmp_path / "cachedir"
    index = json.loads(src.cache.path.with_suffix(".json").read_text())
    assert index["spec"] == {"channels": 3, "size": 16, "resize": "crop", "polarity": "none"}
    assert len(index["files"]) == 12 and not list((tmp_path / "cachedir").glob("*.pkl"))
    assert torch.equal(items(src), items(ImageFolderSource(root, spec=SPEC, cache=False)))
    again = ImageFolderSource(root, spec=SPEC, cache_memory="1", verify=False)
    assert again.cache.path == src.cache.path and again.cache.filled_count == 12  # from disk
    other = ImageFolderSource(root, spec=SPEC.with_(size=12), cache_memory=1, verify=False)
    assert other.cache.path != src.cache.path and other.cache.filled_count == 0


def test_file_changed_on_disk_is_decoded_again(tmp_path):
    root = make_folder(tmp_path / "data")
    cache_dir = tmp_path / "cache"
    src = ImageFolderSource(root, spec=SPEC, cache=cache_dir)  # a directory: a persistent file
    assert src.cache.mode == "file" and src.cache.filled_count == 12
    before = items(src)
    target = root / "c0" / "1.jpg"
    stat = target.stat()
    photo(999, w=60, h=44).save(target)  # other pixels, other size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    lazy = ImageFolderSource(root, spec=SPEC, cache=cache_dir, verify=False)
    assert lazy.cache.filled_count == 11 and not lazy.cache.is_filled(1)
    after = items(lazy)
    assert torch.equal(after[1], items(ImageFolderSource(root, spec=SPEC, cache=False))[1])
    assert not torch.equal(after[1], before[1])
    assert torch.equal(after[np.r_[0, 2:12]], before[np.r_[0, 2:12]])
    # a same-size rewrite is caught by its mtime
    photo(1234).save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    assert not ImageFolderSource(root, spec=SPEC, cache=cache_dir, verify=False).cache.is_filled(1)
    # a file added: a new cache file keeps the slots still valid
    photo(77).save(root / "c2" / "9.jpg")
    grown = ImageFolderSource(root, spec=SPEC, cache=cache_dir, verify=False)
    assert len(grown) == 13 and grown.cache.filled_count == 11  # 1.jpg and the new file missing
    assert torch.equal(items(grown)[:12][np.r_[0, 2:12]], before[np.r_[0, 2:12]])


@pytest.mark.parametrize("budget", [None, 1])
def test_two_workers_give_the_batches_of_zero_workers_and_fill_the_cache(tmp_path, monkeypatch, budget):
    root = make_folder(tmp_path / "data", classes=4, per_class=6)
    monkeypatch.setenv("MEGACLASS_CACHE_DIR", str(tmp_path / "cachedir"))
    batches = [[0, 5, 9, 23], [1, 2, 3, 4], [22, 21, 7, 7], [10, 11, 12, 13], [14, 15, 16, 17]]

    def run(workers):
        src = ImageFolderSource(root, spec=SPEC, verify=False, cache_memory=budget)
        if budget == 1:  # each run starts from an empty cache file
            src.cache._filled[:] = 0
        loader = DataLoader(src, batch_sampler=batches, num_workers=workers)
        return [(x.clone(), y.clone()) for x, y in loader], src

    serial, _ = run(0)
    parallel, src = run(2)
    assert src.cache.mode == ("file" if budget else "memory")
    for (xa, ya), (xb, yb) in zip(serial, parallel, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the workers decoded into memory the main process sees
    assert src.cache.filled_count == len({i for b in batches for i in b})


def test_training_with_two_workers_matches_zero_workers(tmp_path):
    root = make_folder(tmp_path / "data", classes=4, per_class=10)
    src = ImageFolderSource(root, spec=SPEC, verify=False)
    assert src.decodes_files

    def history(workers):
        t = Trainer(src, steps=10, batch_size=8, m_per_class=2, dim=16, widths=(8, 16), num_workers=workers,
                    progress=False)
        t.fit()
        return [r["loss"] for r in t.history_]

    assert history(2) == history(0)  # 10 steps = 2 epochs of 5 batches through persistent workers


def test_unwritable_cache_dir_is_a_clear_error(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"file\.txt/cache.*not writable"):
        ImageFolderSource(root, spec=SPEC, cache=blocker / "cache")
    monkeypatch.setenv("MEGACLASS_CACHE_DIR", str(blocker / "auto"))
    with pytest.raises(ConfigError, match=r"file\.txt/auto.*MEGACLASS_CACHE_DIR"):
        ImageFolderSource(root, spec=SPEC, cache_memory=0)
    # when the images fit in memory the directory is never touched
    assert ImageFolderSource(root, spec=SPEC).cache.mode == "memory"
    assert blocker.read_text() == "not a directory"


def test_memory_budget_grammar(monkeypatch):
    assert memory_budget(1000) == 1000 and memory_budget("2K") == 2048 and memory_budget("1.5M") == 3 << 19
    assert 0 < memory_budget("10%") < memory_budget("20%")
    monkeypatch.setenv("MEGACLASS_CACHE_MEMORY", "3G")
    assert memory_budget() == 3 << 30
    with pytest.raises(ConfigError, match="bad cache memory budget"):
        memory_budget("lots")


def test_corrupt_file_aborts_by_default_and_is_skipped_on_request(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "c1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "c9").mkdir()
    (root / "c9" / "only.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        ImageFolderSource(root, spec=SPEC)
    with pytest.warns(UserWarning) as record:
        src = ImageFolderSource(root, spec=SPEC, skip_bad_files=True)
    messages = " ".join(str(w.message) for w in record)
    assert "broken.jpg" in messages and "only.png" in messages
    assert len(src) == 12 and src.class_names == ["c0", "c1", "c2"] and "c9" in src.skipped_classes
    assert all(p.name not in ("broken.jpg", "only.png") for p in src.paths)
    assert [src[i][1] for i in range(len(src))] == [0] * 4 + [1] * 4 + [2] * 4
    # found while reading (verify=False): left out of the batch with a warning
    lazy = ImageFolderSource(root, spec=SPEC, verify=False, skip_bad_files=True)
    bad = next(i for i, p in enumerate(lazy.paths) if p.name == "broken.jpg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        batch = lazy.__getitems__([0, bad, 1])
    assert len(batch) == 2
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        ImageFolderSource(root, spec=SPEC, verify=False).__getitems__([bad])





def test_train_cli_skip_bad_files(tmp_path):
    root = make_folder(tmp_path / "data", classes=3, per_class=4, ext="png")
    (root / "c0" / "zz.png").write_bytes(b"garbage")
    args = ["train", root, "-m", tmp_path / "model", "--channels", "3", "--size", "16", "--steps", "1",
            "--batch-size", "6", "--m-per-class", "2", "--dim", "8", "--json"]
    failed = run(*args, check=False)
    assert failed.returncode == 2 and "zz.png" in failed.stderr + failed.stdout
    assert not (tmp_path / "model").exists()
    ok = run(*args, "--skip-bad-files")
    assert json.loads(ok.stdout)["classes"] == 3 and "zz.png" in ok.stderr


def test_bench_data_cli_writes_json(tmp_path):
    # widths 8,16: with 4-channel convolutions, channels_last and 1 torch thread (bench data's
    # default) torch 2.13 CPU aborts with "corrupted double-linked list" (seen 2026-11-30)
    out = tmp_path / "bench"
    proc = run("bench", "data", "--out", out, "--images", "16", "--classes", "4", "--jpeg-size", "64x48",
                   "--size", "16", "--png-images", "16", "--png-size", "16", "--epochs", "2", "--batch", "8",
                   "--widths", "8,16", "--json")
    report = json.loads((out / "data_bench.json").read_text())
    assert json.loads(proc.stdout)["config"] == report["config"]
    assert [d["name"] for d in report["datasets"]] == ["jpeg", "png"]
    for d in report["datasets"]:
        arms = {a["arm"]: a for a in d["arms"]}
        assert set(arms) == {"memory", "folder_cache", "folder_no_cache"}
        assert all(len(a["epochs"]) == 2 and a["steady_images_per_s"] > 0 for a in arms.values())
        assert arms["folder_cache"]["cache_mode"] == "memory"
        assert d["ratios"]["folder_cache_steady_vs_memory"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (out / "data_bench.png").exists()


def test_image_cache_without_folder(tmp_path):
    paths = []
    for i in range(3):
        photo(i).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    cache = ImageCache(paths, SPEC)
    x = cache.get([2, 2, 0])
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 16, 16) and cache.filled_count == 2
    assert "memory" in repr(cache)
