"""Distributed training (issue 18): 2 gloo processes on this box, small sizes.

Tolerances: a world of 2 sums the softmax normaliser and the embedding gradients over
shards in another order than one process, so float32 results agree to rounding: losses to
1e-5 relative, encoder parameters, gradients and centres to 1e-5 absolute (their scale
is 1e-2 .. 1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _dist_helpers import OPTIONS, PlainNoBN, centres_of, equivalence_worker, source, summary
from megaclass.errors import ConfigError
from megaclass.heads import load_head
from megaclass.train.launch import launch
from megaclass.train.sharded import reshard

MEGACLASS = [str(Path(sys.executable).parent / "megaclass")]


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt2")
    results = launch(2, equivalence_worker, [str(ckpt)])
    return results, ckpt


def _close(a, b, atol=1e-5):
    return np.allclose(a, b, atol=atol, rtol=1e-4)


def test_world_of_two_equals_one_process(world2):
    results, _ = world2
    torch.manual_seed(0)
    plain = PlainNoBN(source(), **OPTIONS)
    plain.fit()
    one = summary(plain)
    assert [r["class_range"] for r in (results[0], results[1])] == [[0, 20], [20, 40]]
    for rank in (0, 1):
        assert np.allclose(results[rank]["losses"], one["losses"], rtol=1e-5, atol=0), (rank, one["losses"])
        for name, value in one["params"].items():
            assert _close(results[rank]["params"][name], value), name
        for name, value in one["grads"].items():  # the last step's encoder gradients
            assert _close(results[rank]["grads"][name], value, atol=1e-6 + 1e-4 * np.abs(value).max()), name
    assert _close(centres_of(results), one["centres"])


def test_reshard_two_to_one_resumes_the_same_next_step(world2, tmp_path):
    results, ckpt = world2
    root = tmp_path / "one"
    shutil.copytree(ckpt / "step-00000002", root / "step-00000002")
    (root / "latest").write_text("step-00000002")
    with pytest.raises(ConfigError, match="written by 2 processes"):
        PlainNoBN(source(), checkpoint_dir=str(root), resume=True, **OPTIONS).fit()
    reshard(root, 1)
    assert load_head(root / "step-00000002" / "head").num_classes == 40
    resumed = PlainNoBN(source(), checkpoint_dir=str(root), resume=True, **OPTIONS)
    resumed.fit()
    one = summary(resumed)
    assert one["losses"][2] == pytest.approx(results[0]["losses"][2], rel=1e-5)
    assert _close(one["centres"], centres_of(results))
    for name, value in one["params"].items():
        assert _close(results[0]["params"][name], value), name
    # and back: 1 -> 2 gives the shards a world of 2 wrote (bit for bit)
    reshard(root / "step-00000002", 2)
    for r in (0, 1):
        shard = f"step-00000002/head-shards/rank-0000{r}-of-00002/head.safetensors"
        from safetensors.torch import load_file

        mine, theirs = load_file(root / shard), load_file(ckpt / shard)
        assert set(mine) == set(theirs) == {"weight", "momentum_buffer", "step_count", "__rng__"}
        assert all(torch.equal(mine[k], theirs[k]) for k in mine if k != "__rng__")
    shutil.rmtree(root / "step-00000002" / "head-shards" / "rank-00001-of-00002")
    with pytest.raises(ConfigError, match=r"ranks \[1\] of 2 are missing"):
        reshard(root / "step-00000002", 1)


def _train(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(MEGACLASS + ["train", *args], capture_output=True, text=True, env=env, **kw)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def test_killed_rank_stops_the_job_then_resume_converges(tmp_path):
    """A SIGKILLed rank ends the job (exit 2, rank and signal named, < 60 s, no model written);
    --resume from the last checkpoint then trains on and, with sampled negatives, converges."""
    ck, model = tmp_path / "ck", tmp_path / "m"
    args = ["glyphs:0-64", "-m", str(model), "--head", "partial_fc", "--nproc", "2", "--steps", "400",
            "--sample-rate", "0.25", "--batch-size", "64", "--dim", "32", "--samples-per-class", "16",
            "--checkpoint-dir", str(ck), "--checkpoint-every", "2", "--workers", "0", "--dist-timeout", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(MEGACLASS + ["train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.time() + 300
    while not (ck / "latest").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    workers = [p for p in _children(proc.pid) if "megaclass.train" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)
    killed = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert time.time() - killed < 60
    assert "SIGKILL" in err and "distributed training stopped" in err, err[-2000:]
    assert not model.exists()  # nothing half-written
    args[args.index("--steps") + 1] = "60"
    r = _train([*args, "--resume", "--json"], timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout[r.stdout.index("{"):])["world_size"] == 2
    assert (model / "model.safetensors").is_file()
    state = json.loads((ck / (ck / "latest").read_text() / "state.json").read_text())
    losses = [h["loss"] for h in state["history"]]
    assert state["world_size"] == 2 and [h["step"] for h in state["history"]] == list(range(1, 61))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5]), losses


def test_bad_input_is_refused_before_launch(tmp_path, world2):
    from megaclass.train.launch import plan_distributed

    results, ckpt = world2
    assert results[0]["mismatch"] == results[1]["mismatch"]
    assert "ranks [1] were started with options different from rank 0's: lr" in results[0]["mismatch"]
    src, opts = source(), dict(OPTIONS, progress=False)
    for nproc, options, message in [
            (0, opts, "--nproc must be a positive integer"),
            (2, dict(opts, head="cosface", head_options={}), "trains the partial_fc head"),
            (3, dict(opts, batch_size=32), "must split evenly over 3"),
            (2, dict(opts, focal_gamma=1.0), "--focal-gamma"),
            (4, dict(opts, checkpoint_dir=str(ckpt), resume=True), "written by 2 processes, --nproc is 4")]:
        with pytest.raises(ConfigError, match=message):
            plan_distributed(nproc, "auto", 60, src, options, [])
    with pytest.raises(ConfigError, match="backend must be one of"):
        plan_distributed(2, "mpi", 60, src, opts, [])
    r = _train(["glyphs:0-8", "-m", str(tmp_path / "m"), "--head", "partial_fc", "--steps", "2",
                "--nproc", "9"], timeout=120)
    assert r.returncode == 2 and "9 processes but the data has 8 classes" in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()
