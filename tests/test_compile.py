"""torch.compile: the folded-weight cache must not make Dynamo recompile every SLL layer once it fills (issue 16)."""

from __future__ import annotations

from lipsim_metric import LipSim


def test_compiled_metric_matches_and_does_not_recompile_after_the_first_call() -> None:
    import torch._dynamo

    torch.manual_seed(0)
    metric = LipSim(pretrained=False)
    x0, x1 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch._dynamo.reset()
    compiled = torch.compile(metric, backend="eager")
    try:
        with torch.no_grad():
            first = compiled(x0, x1)  # compiles (once per distinct layer shape) and fills the caches
            with torch._dynamo.config.patch(error_on_recompile=True):
                again = compiled(x0, x1)  # before the fix: RecompileError on _folded's cache-key guard
        assert torch.allclose(first, metric(x0, x1), atol=1e-6) and torch.equal(first, again)
    finally:
        torch._dynamo.reset()
