"""Several processes: sharding helpers, and a 2-process gloo run on the CPU
(``torchrun --nproc_per_node=2``) against the same work in one process.

What is compared, and the tolerances (float32 everywhere, see
``_distributed_job.float32_only``):

* the gradient of one NT-Xent step through DDP, the gathered projections and
  the global-batch BatchNorm: to 1e-4 of each tensor's largest entry (measured
  5e-6; a gradient off by the factor W = 2 fails);
* the embeddings of the original and augmented views: equal to 1e-6 (the
  shards are whole blocks, so the same batches run in both);
* the loss per SimCLR epoch to 0.02 (measured 4e-3): the first step agrees to
  1e-6, but AdamW's first update is ``lr * sign(gradient)``, and gradients that
  are zero up to rounding (dead channels) flip sign between summation orders,
  so weights drift apart by ``2 * lr`` in a few entries and the losses slowly;
* SPICE-Semi finetune (SGD): losses to 0.01 and weights to 0.1 of each tensor's
  largest entry (measured 1.3e-3 and 2.7e-2; thresholded confidences make it
  discontinuous);
* the estimator: identical labels and predictions on this easy problem;
* the two ranks: bit-identical results (every rank ends with the same model).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spice_learn import distributed

HERE = Path(__file__).parent


@pytest.mark.parametrize("n", [0, 1, 7, 64, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("block", [1, 4, 32])
def test_shard_ranges_cover_every_item_once_in_order(n, world, block):
    ranges = [distributed.shard_range(n, rank=r, world_size=world, block=block)
              for r in range(world)]
    assert [i for lo, hi in ranges for i in range(lo, hi)] == list(range(n))
    assert all(lo % block == 0 or lo == n for lo, _ in ranges)  # boundaries on blocks
    sizes = [-(-(hi - lo) // block) for lo, hi in ranges]  # blocks per rank
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_shard_range_of_one_process_is_everything():
    assert distributed.shard_range(10) == (0, 10)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main_process() and not distributed.is_distributed()


def test_helpers_are_identities_without_a_process_group():
    x = torch.randn(5, 3, requires_grad=True)
    assert distributed.all_gather_rows(x) is x and distributed.gather_with_grad(x) is x
    assert distributed.broadcast_object([1, 2]) == [1, 2]
    bn = torch.nn.BatchNorm1d(3)
    assert distributed.wrap_ddp(bn, torch.device("cpu")) is bn
    with distributed.synced_batchnorm(bn, torch.device("cpu")) as same:
        assert same is bn and "forward" not in vars(bn)


def test_setup_outside_torchrun_changes_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup(torch.device("cpu")) == torch.device("cpu")
    assert not torch.distributed.is_initialized()


def test_rank_device_gives_each_torchrun_process_its_local_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cpu = torch.device("cpu")
    assert distributed.rank_device(cpu, 3) == cpu
    assert distributed.rank_device(torch.device("cuda"), 3) == torch.device("cuda", 3)
    assert distributed.rank_device(torch.device("cuda", 1), 1) == torch.device("cuda", 1)
    with pytest.warns(UserWarning, match=r"'cuda:0' is replaced by 'cuda:2'"):
        assert distributed.rank_device(torch.device("cuda", 0), 2) == torch.device("cuda", 2)


def test_rank_device_refuses_more_processes_than_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.rank_device(torch.device("cuda"), 0) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"local rank 1, but the machine has 1 GPU"):
        distributed.rank_device(torch.device("cuda"), 1)


def test_setup_under_torchrun_uses_the_local_rank_for_cuda(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # no group made
    with pytest.warns(UserWarning, match="local rank 1"):
        assert distributed.setup(torch.device("cuda", 0)) == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]


class _BatchNormAct(torch.nn.BatchNorm2d):
    """A BatchNorm subclass with its own forward (as timm's BatchNormAct2d)."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def _pretend_two_processes(monkeypatch):
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: 0)


def test_synced_batchnorm_uses_sync_batchnorm_on_cuda(monkeypatch):
    _pretend_two_processes(monkeypatch)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4),
                              torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)),
                              _BatchNormAct(4))
    originals = [net[1], net[2][1]]
    with pytest.warns(RuntimeWarning, match="_BatchNormAct layers keep per-process"):
        with distributed.synced_batchnorm(net, torch.device("cuda")) as synced:
            assert synced is net
            layers = [net[1], net[2][1]]
            assert all(type(m) is torch.nn.SyncBatchNorm for m in layers)
            for new, old in zip(layers, originals):  # the same tensors, not copies
                assert new.weight is old.weight and new.running_mean is old.running_mean
            assert type(net[3]) is _BatchNormAct
    assert [net[1], net[2][1]] == originals  # the original layers are back
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())


def test_synced_batchnorm_of_a_lone_layer_on_cuda(monkeypatch):
    _pretend_two_processes(monkeypatch)
    bn = torch.nn.BatchNorm1d(3)
    with distributed.synced_batchnorm(bn, torch.device("cuda")) as synced:
        assert type(synced) is torch.nn.SyncBatchNorm and synced.weight is bn.weight


def test_synced_batchnorm_on_the_cpu_replaces_forward_only(monkeypatch):
    # torch.nn.SyncBatchNorm refuses CPU tensors; the gloo fallback patches forward.
    _pretend_two_processes(monkeypatch)
    bn = torch.nn.BatchNorm1d(3)
    with distributed.synced_batchnorm(bn, torch.device("cpu")) as synced:
        assert synced is bn and "forward" in vars(bn)
    assert "forward" not in vars(bn)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Results of the job in two gloo processes (rank 0 and 1) and in this one."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{Path(distributed.__file__).parents[1]}"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={_free_port()}", str(HERE / "_distributed_job.py"), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sys.path.insert(0, str(HERE))
    import _distributed_job

    single = _distributed_job.run_all(tmp_path_factory.mktemp("single"))
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return single, ranks


def _relative_gaps(tensors, references):
    return [float((t - r).abs().max() / r.abs().max().clamp_min(1e-12))
            for t, r in zip(tensors, references, strict=True)]


def test_ranks_end_with_identical_results(runs):
    _, (a, b) = runs
    assert a["world_size"] == b["world_size"] == 2

    def flat(tree):
        if isinstance(tree, dict):
            return [x for key in sorted(tree) for x in flat(tree[key])]
        if isinstance(tree, (list, tuple)):
            return [x for item in tree for x in flat(item)]
        return [torch.as_tensor(np.asarray(tree))]

    for x, y in zip(flat(a), flat(b), strict=True):
        assert torch.equal(x, y)


def test_gradient_of_a_step_is_the_one_process_gradient(runs):
    single, (dist_run, _) = runs
    one, two = single["gradient"], dist_run["gradient"]
    assert float(two["loss"]) == pytest.approx(float(one["loss"]), rel=1e-5)
    assert max(_relative_gaps(two["grads"], one["grads"])) < 1e-4
    # the BatchNorm running statistics saw the global batch
    assert max(_relative_gaps(two["running"], one["running"])) < 1e-4


def test_sharded_embedding_equals_one_process(runs):
    single, (dist_run, _) = runs
    torch.testing.assert_close(dist_run["embedding"]["views"], single["embedding"]["views"],
                               rtol=1e-6, atol=1e-6)


def test_pretraining_follows_the_one_process_run(runs):
    single, (dist_run, _) = runs
    np.testing.assert_allclose(dist_run["pretraining"]["history"],
                               single["pretraining"]["history"], atol=0.02)


def test_finetune_follows_the_one_process_run(runs):
    single, (dist_run, _) = runs
    one, two = single["finetuning"], dist_run["finetuning"]
    np.testing.assert_allclose(two["history"], one["history"], atol=0.01)
    assert max(_relative_gaps(two["weights"], one["weights"])) < 0.1


def test_estimator_under_torchrun_matches_one_process(runs):
    single, (dist_run, _) = runs
    one, two = single["estimator"], dist_run["estimator"]
    np.testing.assert_allclose(two["pretrain_history"], one["pretrain_history"], atol=0.02)
    assert (two["labels"] == one["labels"]).mean() >= 0.9
    assert (two["predict"] == one["predict"]).mean() >= 0.9


def test_misuse_raises_in_every_process(runs):
    single, ranks = runs
    for run in ranks:
        assert all(bool(v) for v in run["misuse"].values()), run["misuse"]
    assert not any(bool(v) for v in single["misuse"].values())  # one process: no error


def test_cache_dir_and_checkpoint_dir_under_torchrun(runs):
    single, ranks = runs
    for run in ranks:
        caches = run["caches"]
        assert bool(caches["embedded0"]) and not bool(caches["embedded1"])
        for name in ("views0", "views1"):
            for got, want in zip(caches[name], single["caches"]["views0"], strict=True):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert caches["history1"].tolist() == caches["history0"].tolist()
