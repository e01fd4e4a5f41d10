"""A rank that dies mid-run (issue 18 parts 5 and 7), resuming from the last checkpoint, and the
resumed job's sharded checkpoint exported into a gallery (part 4) -- one `megaclass train --nproc 2`
run, killed then resumed, shared by the module's tests (each CLI start costs several seconds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _dist_helpers import cli_in_process
from megaclass import GlyphSource, Recognizer
from megaclass.errors import ConfigError
from megaclass.gallery import Gallery

MEGACLASS = [str(Path(sys.executable).parent / "megaclass")]
CLASSES = 64
RESUMED_STEPS = 60  # at 16 px: unseen drawings 89 % top-1 by the centres in one process (30 steps: 2 %)
#: a SIGKILLed rank must end the job within this (the agent polls every 0.2 s, then gives the
#: other ranks 10 s to stop); measured 3 s on this 2-core box at load 20-25
KILL_BOUND_S = 60


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train (400 steps asked) on 2 ranks, SIGKILL one rank after the first checkpoint, then
    resume to RESUMED_STEPS; what the tests look at."""
    root = tmp_path_factory.mktemp("killed")
    ck, model = root / "ck", root / "m"
    args = [f"glyphs:0-{CLASSES}", "-m", str(model), "--head", "partial_fc", "--nproc", "2",
            "--sample-rate", "0.25", "--batch-size", "64", "--dim", "32", "--size", "16",
            "--samples-per-class", "16",
            "--checkpoint-dir", str(ck), "--checkpoint-every", "2", "--workers", "0", "--dist-timeout", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(MEGACLASS + ["train", *args, "--steps", "400"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    started = time.time()
    deadline = started + 300
    while not (ck / "latest").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    workers = [p for p in _children(proc.pid) if "megaclass.train" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) == 2, (workers, proc.poll())
    os.kill(max(workers), signal.SIGKILL)
    killed = time.time()
    print(f"first checkpoint after {killed - started:.1f} s")
    _, err = proc.communicate(timeout=120)
    out = types.SimpleNamespace(root=root, ck=ck, model=model, kill_code=proc.returncode,
                                kill_seconds=time.time() - killed, kill_err=err,
                                model_after_kill=model.exists())
    out.resume_code = cli_in_process(["train", *args, "--steps", str(RESUMED_STEPS), "--resume"])
    resumed = time.time() - killed - out.kill_seconds
    print(f"stopped {out.kill_seconds:.1f} s after the kill; resume took {resumed:.1f} s")
    return out


def test_killed_rank_stops_the_job_in_bounded_time(run):
    """Exit 2 with the rank and signal named, within KILL_BOUND_S, and no model written."""
    assert run.kill_code == 2, run.kill_err[-2000:]
    assert run.kill_seconds < KILL_BOUND_S
    assert "SIGKILL" in run.kill_err and "distributed training stopped" in run.kill_err, run.kill_err[-2000:]
    assert not run.model_after_kill  # nothing half-written


def test_resume_from_the_last_checkpoint_converges(run):
    """--resume picks up the killed job's checkpoint and, with sampled negatives, converges."""
    assert run.resume_code == 0
    assert (run.model / "model.safetensors").is_file()
    state = json.loads((run.ck / (run.ck / "latest").read_text() / "state.json").read_text())
    losses = [h["loss"] for h in state["history"]]
    assert state["world_size"] == 2
    assert [h["step"] for h in state["history"]] == list(range(1, RESUMED_STEPS + 1))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5]), losses


def test_export_head_from_the_sharded_checkpoint_then_identify(run, tmp_path):
    """train --nproc 2 -> export-head CKPT (read shard by shard) -> identify with the trained model:
    unseen drawings of the training classes are identified by the exported centres."""
    from megaclass import cli
    from megaclass.models import load_encoder

    assert run.resume_code == 0
    cli._register_area_commands()
    gallery = tmp_path / "g"
    res = CliRunner().invoke(cli.app, ["export-head", str(run.ck), "-g", str(gallery),
                                       "--data", f"glyphs:0-{CLASSES}", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"gallery": str(gallery), "classes": CLASSES, "dim": 32,
                                      "head": "partial_fc"}
    names = GlyphSource(range(CLASSES)).class_names
    with Gallery.open(gallery) as g:
        assert len(g) == CLASSES and sorted(g.labels()) == sorted(names)
    last = run.ck / (run.ck / "latest").read_text()
    assert (load_encoder(last / "encoder").state_dict().keys() == load_encoder(run.model).state_dict().keys())
    rec = Recognizer(run.model, gallery)
    x, y = GlyphSource.batch(list(range(CLASSES)), 1, start=100, size=16)  # drawings the run never saw
    top = [d.candidates[0].label for d in rec.identify(x, k=1, threshold=None)]
    accuracy = np.mean([t == names[c] for t, c in zip(top, y, strict=True)])
    assert accuracy >= 0.4, (accuracy, top)  # chance: 1/64
    rec.gallery.close()
    shard = last / "head-shards" / "rank-00000-of-00002"
    res = CliRunner().invoke(cli.app, ["export-head", str(shard), "-g", str(tmp_path / "g2")])
    assert isinstance(res.exception, ConfigError) and "one rank's shard" in str(res.exception)
    assert not (tmp_path / "g2").exists()
    with pytest.raises(ConfigError, match="labels for a head of 64 classes"):
        from megaclass.train.sharded import export_checkpoint_head

        export_checkpoint_head(run.ck, tmp_path / "g3", labels=["a"])


#: a SIGSTOPped rank (alive, silent) must end the job within the collective timeout plus this
HANG_SLACK_S = 90


@pytest.mark.slow
def test_hung_rank_stops_the_job_within_the_collective_timeout(tmp_path):
    """Part 5, the other half: a rank that hangs (SIGSTOP: its process and sockets stay open, so
    nothing notices a death) makes the job end with a clear error after --dist-timeout, not hang."""
    timeout = 15
    ck = tmp_path / "ck"
    args = [f"glyphs:0-{CLASSES}", "-m", str(tmp_path / "m"), "--head", "partial_fc", "--nproc", "2",
            "--sample-rate", "0.25", "--batch-size", "64", "--dim", "32", "--size", "16",
            "--samples-per-class", "16", "--steps", "400", "--checkpoint-dir", str(ck),
            "--checkpoint-every", "2", "--workers", "0", "--dist-timeout", str(timeout)]
    proc = subprocess.Popen(MEGACLASS + ["train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers: list[int] = []
    try:
        deadline = time.time() + 300
        while not (ck / "latest").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        workers = [p for p in _children(proc.pid)
                   if "megaclass.train" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(workers) == 2, (workers, proc.poll())
        os.kill(max(workers), signal.SIGSTOP)
        stopped = time.time()
        _, err = proc.communicate(timeout=timeout + HANG_SLACK_S + 60)
        took = time.time() - stopped
        print(f"first checkpoint after {stopped - deadline + 300:.1f} s; the job ended {took:.1f} s "
              f"after the SIGSTOP (timeout {timeout} s)")
    finally:
        for pid in workers:  # never leave a stopped process behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-2000:]
    assert took < timeout + HANG_SLACK_S, took
    assert "distributed training stopped" in err and "hung or died" in err, err[-2000:]
    assert not (tmp_path / "m").exists()  # nothing half-written
