"""The model front door: LipSim.from_pretrained / create_metric, typed pretrained configs, hub resolution, and the
deprecated ``EmbeddingResult.norm`` alias."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch

from data_fixtures import TINY_BACKBONE
from lipsim_metric import (
    DEFAULT_WEIGHTS,
    EmbeddingResult,
    LipSim,
    PretrainedCfg,
    create_backbone,
    create_metric,
    get_pretrained_cfg,
)
from lipsim_metric import hub as H
from lipsim_metric import pretrained as P

SMALL = TINY_BACKBONE  # the backbone of the small_file fixture (conftest.py)


def _unregistered_cfg(small_file: Path, **changes) -> PretrainedCfg:
    fields = dict(name="lipsim-fast.mine", variant="lipsim-fast", filename=small_file.name, hf_hub_id=None,
                  sha256=H.sha256_file(small_file), backbone_kwargs=SMALL, input_size=64)
    fields.update(changes)
    return PretrainedCfg(**fields)


def test_from_pretrained_default_is_lipsim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, the shipped default is found by the same resolver that would download it (the Hub is never asked)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("the shipped default must not be downloaded")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    plain, front = LipSim(), LipSim.from_pretrained()
    assert front.weights_name == plain.weights_name == DEFAULT_WEIGHTS
    assert front.weights_path == plain.weights_path == H.resolve_weights(DEFAULT_WEIGHTS)
    assert front.pretrained_cfg is get_pretrained_cfg(DEFAULT_WEIGHTS) and front.pretrained_cfg.input_size == 224
    x0 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x1 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(front(x0, x1), plain(x0, x1))
    assert create_metric().weights_name == DEFAULT_WEIGHTS
    assert create_metric("lipsim-fast").weights_name == DEFAULT_WEIGHTS  # a variant stands for its default weights


def test_from_pretrained_by_path_and_by_config(small_file: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    by_path = LipSim.from_pretrained(small_file, input_range="[-1,1]")
    assert by_path.weights_name is None and by_path.weights_path == small_file and by_path.input_size == 64
    assert by_path.input_range == "[-1,1]" and by_path.pretrained_cfg.backbone_kwargs == SMALL
    # an unregistered config: its file is looked up like a registered one's (shipped folders), sha256 checked
    monkeypatch.setenv("LIPSIM_WEIGHTS_DIR", str(small_file.parent))
    by_cfg = LipSim.from_pretrained(_unregistered_cfg(small_file))
    assert by_cfg.weights_path == small_file and by_cfg.weights_name is None
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(by_cfg.embed(x), by_path.embed(2 * x - 1))
    with pytest.raises(ValueError, match="sha256"):
        LipSim.from_pretrained(_unregistered_cfg(small_file, sha256="0" * 64))
    with pytest.raises(TypeError, match="drop weights="):
        LipSim.from_pretrained(small_file, weights=small_file)
    with pytest.raises(TypeError, match="drop pretrained="):
        LipSim.from_pretrained(small_file, pretrained=False)


def test_create_metric_random_and_errors(small_file: Path) -> None:
    net = create_metric("lipsim-fast", pretrained=False)
    assert net.weights_path is None and net.variant == "lipsim-fast" and net.pretrained_cfg.sha256 is None
    assert create_metric(pretrained=False, variant="lipsim-paper-small").variant == "lipsim-paper-small"
    with pytest.raises(ValueError, match="pretrained=False builds a random network"):
        create_metric(small_file, pretrained=False)
    with pytest.raises(FileNotFoundError, match="lipsim-paper-small.pretrained"):  # user-supplied, not shipped
        create_metric("lipsim-paper-small")


def test_legacy_constructor_unchanged(small_file: Path) -> None:
    assert LipSim(pretrained=False, variant="lipsim-paper-small").variant == "lipsim-paper-small"
    assert LipSim(weights=small_file).pretrained_cfg.name == "small"
    with pytest.raises(ValueError, match="drop one of them"):
        LipSim(pretrained=False, weights=small_file)
    with pytest.raises(ValueError, match="are for variant 'lipsim-fast', not 'lipsim-paper-small'"):
        LipSim(variant="lipsim-paper-small")
    with pytest.raises(ValueError, match="neither a registered name"):
        LipSim(weights="no-such-weights")
    with pytest.raises(ValueError, match="projection must be 'append' or 'normalize'"):
        LipSim(pretrained=False, projection="cosine")  # type: ignore[arg-type]


def test_config_rejects_a_wrong_projection() -> None:
    with pytest.raises(ValueError, match=r"projection must be one of \['append', 'normalize'\], got 'normalise'.*"
                                         "Use 'append'"):
        PretrainedCfg(name="x.y", variant="lipsim-fast", filename="x.safetensors", projection="normalise")  # type: ignore[arg-type]


def test_config_checks_input_size(small_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"input_size=224 contradicts backbone_kwargs\['input_size'\]=64"):
        PretrainedCfg(name="x.y", variant="lipsim-fast", filename="x.safetensors", backbone_kwargs=SMALL,
                      input_size=224)
    with pytest.raises(ValueError, match="positive int"):
        PretrainedCfg(name="x.y", variant="lipsim-fast", filename="x.safetensors", input_size=0)
    # the backbone builds 224x224 by default: a config declaring 64 without saying so in backbone_kwargs is caught
    # before any file is read or loaded, with the fix
    cfg = PretrainedCfg(name="x.y", variant="lipsim-fast", filename="x.safetensors", input_size=64)
    with pytest.raises(ValueError, match=r"builds a backbone for 224x224 inputs\. Set backbone_kwargs\['input_size'\]"
                                         "=64"):
        cfg.build_backbone()
    monkeypatch.setenv("LIPSIM_WEIGHTS_DIR", str(small_file.parent))
    bad = _unregistered_cfg(small_file, backbone_kwargs={"embed_dim": 128, "linear_hidden": 32})
    with pytest.raises(ValueError, match="declares input_size=64"):
        LipSim.from_pretrained(bad)
    with pytest.raises(TypeError, match="backbone_kwargs must be a dict"):
        PretrainedCfg(name="x.y", variant="lipsim-fast", filename="x.safetensors", backbone_kwargs=[])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variant must be a non-empty string"):
        PretrainedCfg(name="x.y", variant="", filename="x.safetensors")


def test_registered_configs_are_consistent() -> None:
    for name in P.list_pretrained():
        cfg = get_pretrained_cfg(name)
        assert cfg.input_size == 224 and cfg.projection in ("append", "normalize")
    assert cfg.build_backbone().input_size == cfg.input_size  # the last one (a paper-small config)


def test_old_import_locations_still_work() -> None:
    assert P.resolve_weights is H.resolve_weights and P.sha256_file is H.sha256_file
    assert P.shipped_weights_dirs is H.shipped_weights_dirs
    from lipsim_metric.pretrained import resolve_weights  # noqa: F401  (the old import line)


def test_load_state_dict_strict_accepts_a_mapping(small_file: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(small_file))
    net = create_backbone("lipsim-fast", **SMALL)
    P.load_state_dict_strict(net, state)
    state.pop("linear.0.q")
    with pytest.raises(ValueError, match=r"the given state dict does not fit .* missing \['linear.0.q'\]"):
        P.load_state_dict_strict(net, state)


def test_embedding_result_renamed_norm_is_a_deprecated_alias() -> None:
    metric = LipSim(pretrained=False, variant="lipsim-fast", input_range="[0,1]")
    x = torch.rand(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns nowhere
        out = metric.embed(x, return_norm=True)
        emb, norm = out  # tuple unpacking keeps working
        assert isinstance(out, EmbeddingResult) and out._fields == ("embedding", "augmented_norm")
        assert torch.equal(norm, out.augmented_norm) and torch.equal(emb, out.embedding)
        assert torch.all(out.augmented_norm >= 1.0)  # ||[f(x); 1]|| >= 1, while ||embedding|| == 1
    with pytest.warns(DeprecationWarning, match="use .augmented_norm"):
        assert torch.equal(out.norm, out.augmented_norm)
    with pytest.warns(DeprecationWarning, match="augmented_norm="):
        old = EmbeddingResult(embedding=emb, norm=norm)
    assert torch.equal(old.augmented_norm, norm)
    with pytest.raises(TypeError, match="both"):
        EmbeddingResult(emb, norm, norm=norm)
    again = pickle.loads(pickle.dumps(out))
    assert isinstance(again, EmbeddingResult) and torch.equal(again.augmented_norm, norm)
