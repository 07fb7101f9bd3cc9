"""Tests for lipsim_metric.train.teachers: golden values, metric properties, weight loading and errors.

Golden values (tests/data/teacher_golden.json) come from the reference packages lpips==0.1.4 and
DISTS_pytorch==0.1; see tests/data/make_teacher_golden.py for the command. Tests that need the shared teacher
weights look for ../shared/teachers beside the checkout (or $LIPSIM_TEACHERS_DIR) and skip when absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lipsim_metric.train import teachers as T
from lipsim_metric.train.teachers import weights as W

DATA_DIR = Path(__file__).parent / "data"
GOLDEN = json.loads((DATA_DIR / "teacher_golden.json").read_text())
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "teachers"


def _find_teachers_dir() -> Path | None:
    env = os.environ.get(T.TEACHERS_DIR_ENV)
    for candidate in ([Path(env)] if env else []) + [_SHARED]:
        if (candidate / T.WEIGHT_FILES["vgg16"]).is_file():
            return candidate
    return None


TEACHERS_DIR = _find_teachers_dir()
needs_weights = pytest.mark.skipif(
    TEACHERS_DIR is None,
    reason=f"teacher weights not found in {_SHARED} or ${T.TEACHERS_DIR_ENV} (see ../shared/README.md)",
)


def _load_golden_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_teacher_golden", DATA_DIR / "make_teacher_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden_images = _load_golden_module()


@pytest.fixture(autouse=True)
def _no_env_teachers_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide themselves whether $LIPSIM_TEACHERS_DIR is set."""
    monkeypatch.delenv(T.TEACHERS_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    return golden_images.make_pairs()


_built: dict[str, nn.Module] = {}


def teacher(name: str) -> nn.Module:
    """Build each teacher once per test session (VGG weights are 59 MB)."""
    if name not in _built:
        build = T.build_distance_teacher if name in T.list_teachers("distance") else T.build_embedding_teacher
        _built[name] = build(name, teachers_dir=TEACHERS_DIR)
    return _built[name]


DISTANCES = ["lpips-vgg", "lpips-alex", "dists"]
EMBEDDINGS = {"alex-stats": 2304, "vgg-stats": 2944}


# ---------------------------------------------------------------------------------------------------- golden


def test_golden_images_are_the_recorded_ones() -> None:
    assert golden_images.pairs_sha256() == GOLDEN["images"]["sha256_uint8_x0_x1"]


@needs_weights
@pytest.mark.parametrize("name", DISTANCES)
def test_matches_reference_package(name: str, pairs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, x1 = pairs
    with torch.no_grad():
        ours = teacher(name)(x0, x1)
    expected = torch.tensor(GOLDEN["values"][name]["value"])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=0.0)


# ---------------------------------------------------------------------------------------------------- properties


@needs_weights
@pytest.mark.parametrize("name", DISTANCES)
def test_identity_and_symmetry(name: str, pairs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, x1 = pairs
    metric = teacher(name)
    with torch.no_grad():
        same = metric(x0, x0)
        forward, backward = metric(x0, x1), metric(x1, x0)
    if name.startswith("lpips"):
        assert torch.equal(same, torch.zeros(2))  # exactly 0: identical features give a zero difference
    else:
        assert same.abs().max() < 1e-5  # DISTS: 1 - sum(weights * 1) up to float rounding
    assert (forward > 0.05).all()
    torch.testing.assert_close(forward, backward, rtol=1e-6, atol=1e-7)


@needs_weights
@pytest.mark.parametrize("name", DISTANCES)
def test_cached_features_give_the_same_distance(name: str, pairs: tuple[torch.Tensor, torch.Tensor]) -> None:
    """features() + distance_from_features() (what attacks use to embed fixed candidates once) == forward()."""
    from lipsim_metric.evaluation.attacks import _distances_to_pair

    x0, x1 = pairs
    metric = teacher(name)
    with torch.no_grad():
        split = metric.distance_from_features(metric.features(x0), metric.features(x1))
        direct = metric(x0, x1)
        d0, d1 = _distances_to_pair(metric, x1, x0)(x0, torch.arange(2))
    torch.testing.assert_close(split, direct, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(d0, metric(x0, x1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(d1, metric(x0, x0), rtol=1e-5, atol=1e-6)
    # the retrieval experiment's gallery cache: (queries, gallery) distance matrix
    from lipsim_metric.evaluation.robustness import _all_distances

    with torch.no_grad():
        matrix = _all_distances(metric, x1)(x0)
    expected = torch.stack([metric(x0, x1[j:j + 1].expand_as(x0)) for j in range(2)], dim=1)
    torch.testing.assert_close(matrix, expected, rtol=1e-5, atol=1e-7)


@needs_weights
@pytest.mark.parametrize("name", DISTANCES)
def test_gradient_reaches_inputs_not_parameters(name: str, pairs: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, x1 = pairs
    x1 = x1.clone().requires_grad_(True)
    metric = teacher(name)
    metric(x0, x1).sum().backward()
    assert x1.grad is not None and torch.isfinite(x1.grad).all() and x1.grad.abs().sum() > 0
    assert all(p.grad is None for p in metric.parameters())


@needs_weights
@pytest.mark.parametrize("name", DISTANCES + list(EMBEDDINGS))
def test_frozen(name: str) -> None:
    model = teacher(name)
    params = list(model.parameters())
    assert params and not any(p.requires_grad for p in params)
    model.train()
    assert not model.training and not any(m.training for m in model.modules())


@needs_weights
def test_batch_invariance_and_small_nonsquare_inputs() -> None:
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.rand(2, 3, 32, 40, generator=gen), torch.rand(2, 3, 32, 40, generator=gen)
    for name in DISTANCES:
        metric = teacher(name)
        with torch.no_grad():
            batched = metric(x0, x1)
            single = torch.cat([metric(x0[i : i + 1], x1[i : i + 1]) for i in range(2)])
        assert batched.shape == (2,)
        torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


@needs_weights
@pytest.mark.parametrize("name", list(EMBEDDINGS))
def test_embedding_teacher(name: str, pairs: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = teacher(name)
    assert model.embed_dim == EMBEDDINGS[name]
    x = pairs[0].clone().requires_grad_(True)
    embedding = model(x)
    assert embedding.shape == (2, EMBEDDINGS[name])
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2))
    embedding[:, :7].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # distinct images give distinct embeddings; the first channel mean is independent of the batch
    assert not torch.allclose(embedding[0], embedding[1])
    with torch.no_grad():
        torch.testing.assert_close(model(pairs[0][1:]), embedding[1:].detach(), rtol=1e-5, atol=1e-6)
    # constant images have all-zero-variance channels: the std epsilon must keep gradients finite
    flat = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)
    model(flat).sum().backward()
    assert flat.grad is not None and torch.isfinite(flat.grad).all()


# ---------------------------------------------------------------------------------------------------- input errors


@needs_weights
@pytest.mark.parametrize(
    ("make_input", "error", "match"),
    [
        (lambda: [[0.5]], TypeError, "torch.Tensor"),
        (lambda: torch.rand(3, 32, 32), ValueError, r"\(N, 3, H, W\)"),
        (lambda: torch.rand(1, 1, 32, 32), ValueError, r"\(N, 3, H, W\)"),
        (lambda: torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), TypeError, "255"),
        (lambda: torch.rand(1, 3, 16, 64), ValueError, ">= 32"),
        (lambda: torch.rand(1, 3, 32, 32) * 2 - 1, ValueError, r"\(x \+ 1\) / 2"),
        (lambda: torch.full((1, 3, 32, 32), float("nan")), ValueError, "NaN"),
    ],
)
def test_bad_inputs(make_input: Callable[[], object], error: type[Exception], match: str) -> None:
    bad = make_input()
    good = torch.rand(1, 3, 32, 32)
    with pytest.raises(error, match=match):
        teacher("lpips-alex")(good, bad)
    with pytest.raises(error, match=match):
        teacher("alex-stats")(bad)


@needs_weights
def test_mismatched_pair_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        teacher("lpips-alex")(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 40))


# ---------------------------------------------------------------------------------------------------- weights


@needs_weights
def test_trunk_sources_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TEACHERS_DIR is not None
    explicit = T.load_alexnet_features(TEACHERS_DIR / T.WEIGHT_FILES["alexnet"])
    monkeypatch.setenv(T.TEACHERS_DIR_ENV, str(TEACHERS_DIR))
    assert T.default_teachers_dir() == TEACHERS_DIR
    from_env = T.load_alexnet_features()
    assert isinstance(explicit, nn.Sequential) and len(explicit) == 13
    for (name, a), (_, b) in zip(explicit.state_dict().items(), from_env.state_dict().items(), strict=True):
        assert not a.is_meta and torch.equal(a, b), name


@needs_weights
def test_trunk_from_torchvision_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without path or env var, torchvision's weight API is used (here served from its cache, no network)."""
    assert TEACHERS_DIR is not None
    state = load_file(str(TEACHERS_DIR / T.WEIGHT_FILES["alexnet"]))
    # torchvision's full checkpoint also holds the classifier, which must be ignored.
    full = dict(state, **{"classifier.1.weight": torch.zeros(2, 2)})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(full, cache / Path(W.torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url).name)
    features = T.load_alexnet_features(download=False)
    assert torch.equal(features[10].weight, state["features.10.weight"])


def test_missing_weights_name_every_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        T.load_vgg16_features(tmp_path / "nope.safetensors")
    monkeypatch.setenv(T.TEACHERS_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{T.TEACHERS_DIR_ENV}.*alexnet_imagenet_features"):
        T.load_alexnet_features()
    monkeypatch.setenv(T.TEACHERS_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        T.default_teachers_dir()
    monkeypatch.delenv(T.TEACHERS_DIR_ENV)
    assert T.default_teachers_dir() is None
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty torchvision cache, no download
    with pytest.raises(FileNotFoundError, match=f"path=.*{T.TEACHERS_DIR_ENV}.*download") as info:
        T.load_vgg16_features(download=False)
    assert "vgg16_imagenet_features.safetensors" in str(info.value)


def test_missing_heads_and_alpha_beta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hide any installed reference packages so only the error path remains.
    monkeypatch.setattr(W, "_package_file", lambda *args: None)
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(FileNotFoundError, match="heads_path=.*pip install lpips"):
        W._load_lpips_heads("alex", None, (64, 192, 384, 256, 256))
    with pytest.raises(FileNotFoundError, match="alpha_beta_path=.*pip install DISTS_pytorch"):
        W._load_dists_alpha_beta(None)


@needs_weights
def test_strict_loading_names_bad_keys(tmp_path: Path) -> None:
    assert TEACHERS_DIR is not None
    state = load_file(str(TEACHERS_DIR / T.WEIGHT_FILES["alexnet"]))
    truncated = {k: v for k, v in state.items() if k != "features.8.bias"}
    save_file(truncated, str(tmp_path / "truncated.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['8.bias'\]"):
        T.load_alexnet_features(tmp_path / "truncated.safetensors")
    reshaped = dict(state, **{"features.8.bias": torch.zeros(7)})
    save_file(reshaped, str(tmp_path / "reshaped.safetensors"))
    with pytest.raises(ValueError, match="8.bias"):
        T.load_alexnet_features(tmp_path / "reshaped.safetensors")
    alex_trunk = TEACHERS_DIR / T.WEIGHT_FILES["alexnet"]
    with pytest.raises(ValueError, match=r"wrong shapes.*lin1\.model\.1\.weight"):
        T.LPIPS("alex", trunk_path=alex_trunk, heads_path=TEACHERS_DIR / T.WEIGHT_FILES["lpips-vgg-heads"])
    with pytest.raises(ValueError, match=r"missing keys \['lin0.*unexpected keys \['alpha', 'beta'\]"):
        T.LPIPS("alex", trunk_path=alex_trunk, heads_path=TEACHERS_DIR / T.WEIGHT_FILES["dists-alpha-beta"])


@needs_weights
def test_lpips_heads_from_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a path or env var, heads come from an installed ``lpips`` package's weights/v0.1/*.pth."""
    assert TEACHERS_DIR is not None
    package = tmp_path / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    heads = load_file(str(TEACHERS_DIR / T.WEIGHT_FILES["lpips-alex-heads"]))
    torch.save(heads, package / "weights" / "v0.1" / "alex.pth")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    loaded = W._load_lpips_heads("alex", None, (64, 192, 384, 256, 256))
    assert all(torch.equal(loaded[k], heads[k]) for k in heads)


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_names_and_errors(tmp_path: Path) -> None:
    assert T.list_teachers("distance") == ["dists", "lpips-alex", "lpips-vgg"]
    assert T.list_teachers("embedding") == ["alex-stats", "dreamsim", "vgg-stats"]
    assert T.list_teachers() == sorted(T.list_teachers("distance") + T.list_teachers("embedding"))
    with pytest.raises(ValueError, match="lpips-alex"):
        T.build_distance_teacher("lpips")
    with pytest.raises(ValueError, match="alex-stats"):
        T.build_embedding_teacher("lpips-vgg")
    with pytest.raises(ValueError, match="kind"):
        T.list_teachers("both")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        T.build_distance_teacher("lpips-alex", teachers_dir=tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="alexnet_imagenet_features"):
        T.build_embedding_teacher("alex-stats", teachers_dir=tmp_path)
    with pytest.raises(ValueError, match="net must be one of"):
        T.LPIPS("squeeze")


def test_dreamsim_missing_package_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dreamsim", None)  # makes `import dreamsim` raise ImportError
    with pytest.raises(ImportError, match="pip install dreamsim"):
        T.build_embedding_teacher("dreamsim")
