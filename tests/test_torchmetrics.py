"""lipsim_metric.torchmetrics: equals LipSim, reductions, MetricCollection, frozen parameters, DDP state sync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchmetrics")
from torchmetrics import MetricCollection  # noqa: E402

from lipsim_metric import LipSim  # noqa: E402
from lipsim_metric.torchmetrics import LipSim2AFC, LipSimMetric  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def net(small_weights: str) -> LipSim:
    return LipSim(weights=small_weights)


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in (3, 2):
        ref = torch.rand(n, 3, 32, 32, generator=g)
        x0 = (ref + 0.05 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)
        x1 = (ref + 0.3 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)
        out.append((ref, x0, x1, torch.rand(n, generator=g)))
    return out


def test_equals_lipsim_with_every_reduction(net: LipSim, batches) -> None:
    with torch.no_grad():
        expected = torch.cat([net(ref, x1) for ref, _, x1, _ in batches])
    reduce = {"mean": torch.mean, "sum": torch.sum, "none": lambda t: t}
    for reduction, fn in reduce.items():
        metric = LipSimMetric(net=net, reduction=reduction)  # type: ignore[arg-type]
        for ref, _, x1, _ in batches:
            metric.update(ref, x1)
        assert torch.allclose(metric.compute(), fn(expected), atol=1e-6)
        metric.reset()  # a new epoch starts from nothing
        metric.update(batches[0][0], batches[0][2])
        assert torch.allclose(metric.compute(), fn(expected[:3]), atol=1e-6)


def test_2afc_natural_and_certified(net: LipSim, batches) -> None:
    metric = LipSim2AFC(net=net, budgets=(0.0, 36 / 255, 10.0))
    scores, radii = [], []
    for ref, x0, x1, target in batches:
        metric.update(ref, x0, x1, target)
        cert = net.certify_2afc(ref, x0, x1)
        scores.append(torch.where(cert.d1 < cert.d0, target, 1 - target))
        radii.append(cert.radius)
    score, radius = torch.cat(scores), torch.cat(radii)
    out = metric.compute()
    assert set(out) == {"natural", "certified@0", "certified@36/255", "certified@10"}
    assert out["natural"].item() == pytest.approx(score.mean().item(), abs=1e-6)
    assert out["certified@36/255"].item() == pytest.approx((score * (radius > 36 / 255)).mean().item(), abs=1e-6)
    assert out["natural"] >= out["certified@0"] >= out["certified@36/255"] >= out["certified@10"]
    with pytest.raises(ValueError, match="shares in"):
        metric.update(*batches[0][:3], torch.full((3,), 2.0))


def test_metric_collection_and_frozen_parameters(net: LipSim, batches) -> None:
    collection = MetricCollection({"lipsim": LipSimMetric(net=net), "twoafc": LipSim2AFC(net=net)})
    ref, x0, x1, target = batches[0]
    collection["lipsim"].update(ref, x1)
    collection["twoafc"].update(ref, x0, x1, target)
    out = collection.compute()
    assert set(out) == {"lipsim", "natural", "certified@36/255", "certified@72/255", "certified@108/255"}
    metric = LipSimMetric(net=net)
    assert all(not p.requires_grad for p in metric.parameters())
    x = x1.clone().requires_grad_(True)
    value = metric(ref, x)  # forward: batch value, differentiable in the inputs
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in metric.parameters())


def test_state_sync_reduces_like_one_process(net: LipSim, batches) -> None:
    """The sync DDP runs at compute(), with the all-gather done by hand: rank 0's states merged with rank 1's give the
    one-process result (torchmetrics gathers the states in the order of ``_reductions``, lists concatenated)."""
    makers = (lambda **kw: LipSimMetric(net=net, reduction="none", **kw), lambda **kw: LipSimMetric(net=net, **kw),
              lambda **kw: LipSim2AFC(net=net, **kw))
    for make in makers:
        rank1, whole = make(), make()
        state: dict = {}

        def gather(tensor: torch.Tensor, group=None, _state=state, _rank1=rank1) -> list[torch.Tensor]:
            if "others" not in _state:
                _state["others"] = iter([torch.cat(v) if isinstance(v, list) else v
                                         for v in (getattr(_rank1, k) for k in _rank1._reductions)])
            return [tensor, next(_state["others"])]

        rank0 = make(dist_sync_fn=gather, distributed_available_fn=lambda: True)
        for metric, (ref, x0, x1, target) in zip((rank0, rank1), batches, strict=True):
            args = (ref, x0, x1, target) if isinstance(metric, LipSim2AFC) else (ref, x1)
            metric.update(*args)
            whole.update(*args)
        synced, expected = rank0.compute(), whole.compute()
        if isinstance(synced, dict):
            assert all(torch.allclose(synced[k], expected[k]) for k in expected)
        else:
            assert torch.allclose(synced, expected, atol=1e-6)
        assert "others" in state  # the sync did run


def test_errors(net: LipSim) -> None:
    with pytest.raises(ValueError, match="reduction"):
        LipSimMetric(net=net, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="either net= or weights="):
        LipSimMetric(net=net, weights="x.safetensors")
    with pytest.raises(TypeError, match="must be a lipsim_metric.LipSim"):
        LipSimMetric(net=torch.nn.Identity())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="budgets"):
        LipSim2AFC(net=net, budgets=())


_DDP_SCRIPT = r"""
import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from lipsim_metric import LipSim
from lipsim_metric.torchmetrics import LipSim2AFC, LipSimMetric

def work(rank, weights, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(n, 3, 32, 32, generator=g), torch.rand(n, 3, 32, 32, generator=g),
             torch.rand(n, 3, 32, 32, generator=g), torch.rand(n, generator=g)) for n in (3, 2)]
    net = LipSim(weights=weights)
    metrics = [LipSimMetric(net=net), LipSimMetric(net=net, reduction="none"), LipSim2AFC(net=net)]
    ref, x0, x1, t = data[rank]
    for m in metrics:
        m.update(ref, x0, x1, t) if isinstance(m, LipSim2AFC) else m.update(ref, x1)
    values = [m.compute() for m in metrics]  # synced across both ranks
    if rank == 0:
        local = {"sync_on_compute": False}  # rank 0 alone, on all the data
        whole = [LipSimMetric(net=net, **local), LipSimMetric(net=net, reduction="none", **local),
                 LipSim2AFC(net=net, **local)]
        for ref, x0, x1, t in data:
            for m in whole:
                m.update(ref, x0, x1, t) if isinstance(m, LipSim2AFC) else m.update(ref, x1)
        expected = [m.compute() for m in whole]
        torch.save({"values": values, "expected": expected}, out)
    dist.barrier()
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(work, args=tuple(sys.argv[1:4]), nprocs=2)
"""


@pytest.mark.slow
def test_ddp_state_sync_with_two_gloo_processes(small_weights: str, tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    out = tmp_path / "out.pt"
    run = subprocess.run([sys.executable, str(script), small_weights, f"file://{tmp_path / 'init'}", str(out)],
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO / "src"),
                                                                           "OMP_NUM_THREADS": "1",
                                                                           "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(out, weights_only=False)
    values, expected = result["values"], result["expected"]
    assert torch.allclose(values[0], expected[0], atol=1e-6)
    assert torch.allclose(values[1], expected[1], atol=1e-6) and values[1].shape == (5,)
    assert all(torch.allclose(values[2][k], expected[2][k]) for k in expected[2])
