"""Distributed training (issue 18): 2 gloo processes on this box, small sizes.

Tolerances: a world of 2 sums the softmax normaliser and the embedding gradients over
shards in another order than one process, so float32 results agree to rounding: losses to
1e-5 relative, encoder parameters, gradients and centres to 1e-5 absolute (their scale
is 1e-2 .. 1).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from _dist_helpers import OPTIONS, PlainNoBN, centres_of, cli_in_process, equivalence_worker, source, summary
from megaclass.errors import ConfigError
from megaclass.heads import load_head
from megaclass.train.launch import launch
from megaclass.train.sharded import reshard


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


def test_sharded_checkpoint_exports_its_centres_and_encoder(world2, tmp_path):
    """A world-2 checkpoint's centres go into a gallery shard by shard (no reshard): the same
    templates as its resharded world-1 head, and its encoder/ is the trained model."""
    from megaclass.heads.export import export_to_gallery
    from megaclass.models import load_encoder
    from megaclass.train.sharded import checkpoint_centres, export_checkpoint_head

    results, ckpt = world2
    parts = list(checkpoint_centres(ckpt, chunk=15))  # the latest: step 3, the run's end
    assert [(lo, hi) for lo, hi, _ in parts] == [(0, 15), (15, 20), (20, 35), (35, 40)]
    centres = torch.cat([c for _, _, c in parts])
    expected = torch.nn.functional.normalize(torch.from_numpy(centres_of(results)), dim=1)
    assert torch.allclose(centres, expected, atol=1e-6)
    names = source().class_names
    g, cfg = export_checkpoint_head(ckpt, tmp_path / "g", labels=names, chunk=15)
    assert (cfg["num_classes"], len(g)) == (40, 40)
    one = reshard(ckpt / "step-00000003", 1, out=tmp_path / "one")
    with export_to_gallery(load_head(one / "head"), tmp_path / "g1", labels=names) as g1:
        for label in (names[0], names[21], names[39]):
            assert np.allclose(g.templates(label), g1.templates(label), atol=1e-6)
        hits = g.search(centres[[3, 27]].numpy(), k=1)
        assert [h[0].label for h in hits] == [names[3], names[27]]
    g.close()
    encoder = load_encoder(ckpt / "step-00000003" / "encoder")
    for name, value in encoder.named_parameters():
        assert np.array_equal(value.detach().numpy(), results[0]["params"][name]), name


def test_bad_input_is_refused_before_launch(tmp_path, world2, capsys):
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
    code = cli_in_process(["train", "glyphs:0-8", "-m", str(tmp_path / "m"), "--head", "partial_fc",
                           "--steps", "2", "--nproc", "9"])
    err = capsys.readouterr().err
    assert code == 2 and "9 processes but the data has 8 classes" in err, err[-2000:]
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("message,hung", [
    ("Timed out waiting 15000ms for recv operation to complete", True),
    ("(Rank 0): Ranks 1 failed to pass monitoredBarrier in 15000 ms", True),
    ("Connection closed by peer (127.0.0.1:4711)", False),
])
def test_a_failed_collective_is_told_as_a_hang_or_a_death(message, hung):
    from megaclass.train.distributed import DistContext, describe_failure

    ctx = DistContext(rank=0, world=2, local_rank=0, backend="gloo", device=torch.device("cpu"),
                      head_group=None, timeout=15.0)
    text = describe_failure(RuntimeError(message), ctx)
    assert text.startswith("rank 0/2: distributed training stopped: ")
    assert ("no answer from another rank within 15 s (it hung or died)" in text) == hung
    assert ("another rank died or closed its connection" in text) == (not hung)
