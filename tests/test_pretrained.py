"""Pretrained registry and weight resolution: shipped folder, Hub cache (offline), strict loading, sha256."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_fixtures import TINY_BACKBONE
from lipsim_metric import LipSim, create_backbone, get_pretrained_cfg, list_pretrained
from lipsim_metric import pretrained as P

SMALL = TINY_BACKBONE  # the backbone of the small_file fixture (conftest.py)


@pytest.fixture()
def registered(small_file: Path):
    cfg = P.PretrainedCfg(name="lipsim-fast.test-only", variant="lipsim-fast", filename="test-only.safetensors",
                          hf_hub_id="lipsim-metric/test-only", revision="main", sha256=P.sha256_file(small_file),
                          backbone_kwargs=SMALL)
    P.register_pretrained(cfg)
    yield cfg
    del P._PRETRAINED[cfg.name]


def test_registry_lists_and_describes() -> None:
    names = list_pretrained()
    assert P.DEFAULT_WEIGHTS in names
    paper = set(list_pretrained("lipsim-paper-small"))
    assert {"lipsim-paper-small.margin0.5", "lipsim-paper-small.pretrained"} <= paper
    cfg = get_pretrained_cfg(P.DEFAULT_WEIGHTS)
    assert cfg.variant == "lipsim-fast" and cfg.filename.endswith(".safetensors")
    with pytest.raises(ValueError, match="registered"):
        get_pretrained_cfg("nope")



@pytest.mark.parametrize("name", sorted(P.RETIRED_WEIGHTS))
def test_retired_weights_say_where_the_file_is(name: str) -> None:
    assert name not in list_pretrained()
    with pytest.raises(ValueError, match="no longer shipped") as info:
        LipSim(weights=name)
    assert P.DEFAULT_WEIGHTS in str(info.value) and "git show" in str(info.value)
    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout: the history the message points to is not here")
    import subprocess

    spec = f"{P.RETIRED_WEIGHTS[name]}:weights/{name}.safetensors"
    assert spec in str(info.value)
    done = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", spec], capture_output=True, timeout=60)
    shallow = subprocess.run(["git", "-C", str(repo), "rev-parse", "--is-shallow-repository"], capture_output=True,
                             text=True, timeout=60).stdout.strip() == "true"
    if done.returncode and shallow:
        pytest.skip("shallow clone: the commit the message names is not here")
    assert done.returncode == 0, f"{spec} is not in git history: {done.stderr.decode()}"

def test_load_by_path_reads_variant_and_architecture(small_file: Path) -> None:
    m = LipSim(weights=small_file)
    assert m.variant == "lipsim-fast" and m.backbone.embed_dim == 128 and m.input_size == 64
    ref = create_backbone("lipsim-fast", **SMALL)
    P.load_state_dict_strict(ref, small_file)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(m.backbone(x), ref(x), atol=1e-6)  # eval mode folds in float64, ref in float32
    with pytest.raises(ValueError, match="not 'lipsim-paper-small'"):
        LipSim(weights=small_file, variant="lipsim-paper-small")


def test_shipped_folder_then_hub_cache_offline(registered, small_file: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # 1. nothing anywhere: a clear error, never random weights
    monkeypatch.setenv("LIPSIM_WEIGHTS_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="weights=<path"):
        LipSim(weights=registered.name, cache_dir=tmp_path / "no-cache")
    # 2. a Hub-layout cache (as hf_hub_download leaves it), read without network
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--lipsim-metric--test-only"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / registered.filename).write_bytes(small_file.read_bytes())
    m = LipSim(weights=registered.name, cache_dir=tmp_path / "hub")
    assert m.weights_path == snap / registered.filename and m.backbone.embed_dim == 128
    # 3. the shipped folder wins over the Hub
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / registered.filename).write_bytes(small_file.read_bytes())
    monkeypatch.setenv("LIPSIM_WEIGHTS_DIR", str(shipped))
    assert LipSim(weights=registered.name, cache_dir=tmp_path / "hub").weights_path == shipped / registered.filename


def test_sha256_mismatch_is_refused(registered, small_file: Path, tmp_path: Path, monkeypatch) -> None:
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    data = bytearray(small_file.read_bytes())
    data[-1] ^= 0xFF
    (shipped / registered.filename).write_bytes(bytes(data))
    monkeypatch.setenv("LIPSIM_WEIGHTS_DIR", str(shipped))
    with pytest.raises(ValueError, match="sha256"):
        LipSim(weights=registered.name)


def test_strict_loading_names_the_problem(small_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(small_file))
    meta = {"variant": "lipsim-fast", "backbone_kwargs": '{"input_size": 64, "embed_dim": 128, "linear_hidden": 32}'}
    missing = dict(state)
    missing.pop("linear.0.q")
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"missing \['linear.0.q'\]"):
        LipSim(weights=tmp_path / "missing.safetensors")
    extra = dict(state, stray=torch.zeros(1))
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"unexpected \['stray'\]"):
        LipSim(weights=tmp_path / "extra.safetensors")
    bad = dict(state)
    bad["linear.0.q"] = torch.zeros(3)
    save_file(bad, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="linear.0.q: file"):
        LipSim(weights=tmp_path / "shape.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        LipSim(weights=tmp_path / "corrupt.safetensors")


def test_half_precision_storage_loads_as_float32(tmp_path: Path) -> None:
    net = create_backbone("lipsim-fast", **SMALL)
    path = P.save_weights(net, tmp_path / "half.safetensors", "lipsim-fast", dtype=torch.float16, backbone_kwargs=SMALL)
    m = LipSim(weights=path)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert path.stat().st_size < 0.6 * P.save_weights(net, tmp_path / "full.safetensors", "lipsim-fast",
                                                       backbone_kwargs=SMALL).stat().st_size
