"""Converter for the authors' checkpoints (``lipsim_metric.convert``), checked against the published equations.

No download: a checkpoint in the authors' layout (``DataParallel(NormalizedModel(L2LipschitzNetwork))``, every layer
registered twice, stray ``alpha``, optimiser state) is built from random tensors, converted, loaded by ``LipSim`` and
compared with an independent implementation of the equations of Ghazanfari et al. (ICLR 2024) / Araujo et al.
(ICLR 2023) written below, which mirrors the official code (github.com/SaraGhazanfari/lipsim,
``lipsim/core/models/l2_lip/layers.py``).
"""

from __future__ import annotations

import collections
import importlib.util
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lipsim_metric import LipSim
from lipsim_metric.convert import PAPER_ARCHITECTURE, convert_checkpoint, load_paper_checkpoint, main
from lipsim_metric.pretrained import read_weights_metadata, sha256_file

CHANNELS, FEATURES, EMBED = 45, 45 * 14 * 14, 1792
# Small hidden widths keep the file and the CPU time small; depths as published (the converter infers all four).
CONV_DEPTH, CONV_HIDDEN, LINEAR_DEPTH, LINEAR_HIDDEN = 20, 5, 7, 64


def _random_layers(seed: int, conv_depth: int = CONV_DEPTH, linear_depth: int = LINEAR_DEPTH,
                   conv_hidden: int = CONV_HIDDEN, linear_hidden: int = LINEAR_HIDDEN):
    """Random SLL parameters in the official shapes.

    Biases are non-positive so that the black image maps to f(0) = 0 exactly (used by the certificate test);
    ``q`` is random so that a wrong treatment of ``q`` (it cancels in the official conv code) shows up.
    """
    g = torch.Generator().manual_seed(seed)
    convs = [
        {
            "kernel": torch.randn(conv_hidden, CHANNELS, 3, 3, generator=g) * (2.0 / (CHANNELS * 9)) ** 0.5 * 3,
            "bias": -0.1 * torch.rand(1, conv_hidden, 1, 1, generator=g),
            "q": torch.randn(conv_hidden, generator=g),
        }
        for _ in range(conv_depth)
    ]
    denses = [
        {
            "weight": torch.randn(linear_hidden, FEATURES, generator=g) * FEATURES**-0.5,
            "bias": -0.1 * torch.rand(1, linear_hidden, generator=g),
            "q": torch.randn(linear_hidden, generator=g),
        }
        for _ in range(linear_depth)
    ]
    return convs, denses


def _authors_state_dict(convs, denses, prefix: str = "module.model.") -> collections.OrderedDict:
    """The key layout of ``DataParallel(NormalizedModel(L2LipschitzNetwork)).state_dict()``.

    ``convs`` / ``linear`` (a ``Flatten`` at index 0) are registered first, then the same modules again as
    ``base.1`` / ``base.2``; copies are separate tensors here so the converter must compare values.
    """
    state: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    for family, offset, layers in (("convs", 0, convs), ("linear", 1, denses), ("base.1", 0, convs),
                                   ("base.2", 1, denses)):
        for i, layer in enumerate(layers):
            for name, value in layer.items():
                state[f"{prefix}{family}.{i + offset}.{name}"] = value.clone()
    state[f"{prefix}alpha"] = torch.tensor(0.5)
    return state


def _authors_checkpoint(state) -> dict:
    return {
        "epoch": 3,
        "global_step": 1200,
        "model_state_dict": state,
        "optimizer_state_dict": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                                 "param_groups": [{"lr": 1e-4, "weight_decay": 0.0, "params": [0]}]},
    }


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def layers():
    return _random_layers(seed=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, layers) -> Path:
    convs, denses = layers
    return _save(_authors_checkpoint(_authors_state_dict(convs, denses)),
                 tmp_path_factory.mktemp("ckpt") / "model.ckpt-1200.pth")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, checkpoint) -> Path:
    out = tmp_path_factory.mktemp("out") / "paper.safetensors"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = convert_checkpoint(checkpoint, out)
    messages = [str(w.message) for w in caught]
    assert any("ignored keys" in m and "alpha" in m for m in messages), messages
    assert any("{'linear_hidden': 64}" in m for m in messages), messages  # differs from the published 1024
    return path


# --- independent implementation of the published equations ---------------------------------------------------------


def _reference_features(x: torch.Tensor, convs, denses) -> torch.Tensor:
    """f(x) of the published network, written from the equations (not from lipsim_metric.layers)."""
    x = torch.cat([x, x.new_zeros(x.shape[0], CHANNELS - x.shape[1], *x.shape[2:])], dim=1)
    for layer in convs:
        k, b = layer["kernel"], layer["bias"]
        # official code: q and 1/q are reshaped along the same axis, so they cancel: t_i = 1 / sum |K K^T|_i.
        t = 1.0 / torch.abs(F.conv2d(k, k, padding=2)).sum(dim=(1, 2, 3))
        res = t[None, :, None, None] * F.relu(F.conv2d(x, k, padding=1) + b)
        x = x - 2.0 * F.conv_transpose2d(res, k, padding=1)
    x = F.avg_pool2d(F.avg_pool2d(x, 4, divisor_override=4), 4, divisor_override=4).flatten(1)
    for layer in denses:
        w, b, q = layer["weight"], layer["bias"], torch.exp(layer["q"])
        t = 1.0 / (torch.abs(w @ w.T) * q[None, :] / q[:, None]).sum(dim=1)
        x = x - 2.0 * (t * F.relu(x @ w.T + b)) @ w
    return x[:, :EMBED]


def _reference_embedding(f: torch.Tensor, projection: str) -> torch.Tensor:
    if projection == "append":
        f = torch.cat([f, torch.ones_like(f[:, :1])], dim=1)
    return f / f.norm(dim=1, keepdim=True)


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images: random low-resolution pattern upsampled, plus a little noise, clamped to [0, 1]
    low = torch.rand(n, 3, 14, 14, generator=g)
    x = F.interpolate(low, size=224, mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.randn(n, 3, 224, 224, generator=g)).clamp(0, 1)


# --- equivalence ---------------------------------------------------------------------------------------------------


def test_converted_checkpoint_matches_published_equations(converted, layers):
    convs, denses = layers
    x = _images(2, seed=1)
    with torch.no_grad():
        ours_norm = LipSim(weights=converted, projection="normalize").embed(x)
        ours_append = LipSim(weights=converted, projection="append").embed(x[:1])
        features = _reference_features(x, convs, denses)
        ref_norm = _reference_embedding(features, "normalize")
        ref_append = _reference_embedding(features[:1], "append")
    assert ours_norm.shape == (2, EMBED) and ours_append.shape == (1, EMBED + 1)
    torch.testing.assert_close(ours_norm, ref_norm, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_append, ref_append, atol=1e-5, rtol=0)
    # the test is only meaningful if the residual branches change the input noticeably
    plain = F.avg_pool2d(F.avg_pool2d(F.pad(x, (0, 0, 0, 0, 0, CHANNELS - 3)), 4, divisor_override=4), 4,
                         divisor_override=4).flatten(1)[:, :EMBED]
    assert (F.normalize(plain, dim=1) - ref_norm).norm(dim=1).min() > 1e-2


def test_metadata_records_architecture_and_source(converted, checkpoint):
    meta = read_weights_metadata(converted)
    assert meta["variant"] == "lipsim-paper-small"
    assert meta["projection"] == "append"
    assert meta["source"] == checkpoint.name
    assert meta["source_sha256"] == sha256_file(checkpoint)
    assert meta["backbone_kwargs"] == {"channels": 45, "conv_depth": CONV_DEPTH, "conv_hidden": CONV_HIDDEN,
                                       "linear_depth": LINEAR_DEPTH, "linear_hidden": LINEAR_HIDDEN,
                                       "embed_dim": EMBED, "input_size": 224}
    assert "alpha" in meta["ignored_keys"]


def test_report_lists_aliases_ignored_keys_and_entries(checkpoint):
    report = load_paper_checkpoint(checkpoint)
    assert report.mapping["convs.0"] == "module.model.convs.0"
    assert report.mapping["convs.19"] == "module.model.convs.19"
    assert report.mapping["linear.0"] == "module.model.linear.1"  # Flatten offset
    assert report.mapping["linear.6"] == "module.model.linear.7"
    assert len(report.duplicates) == CONV_DEPTH + LINEAR_DEPTH
    assert all(d.startswith("module.model.base.") for d in report.duplicates)
    assert report.ignored_keys == ["module.model.alpha"]
    assert set(report.extra_entries) == {"epoch", "global_step", "optimizer_state_dict"}
    # only the hidden width (64 here, 1024 published) differs from the published architecture
    assert len(report.notes) == 1 and "{'linear_hidden': 64}" in report.notes[0]
    assert {**report.backbone_kwargs, "linear_hidden": 1024} == PAPER_ARCHITECTURE
    assert "alpha" in report.summary()


def test_sll_naming_bare_state_dict_and_numeric_order(tmp_path):
    """SLL ``LipschitzNetwork`` names (one family, conv and dense mixed), keys in lexicographic order."""
    convs, denses = _random_layers(seed=2, conv_depth=12, linear_depth=3, linear_hidden=8)
    state = {}
    for i, layer in enumerate(convs):
        state.update({f"stable_block.{i}.{n}": v for n, v in layer.items()})
    for i, layer in enumerate(denses):  # Flatten at index 0 of layers_linear
        state.update({f"layers_linear.{i + 1}.{n}": v for n, v in layer.items()})
    state = dict(sorted(state.items()))  # "stable_block.10" now comes before "stable_block.2"
    report = load_paper_checkpoint(_save(state, tmp_path / "sll.pth"))
    assert report.backbone_kwargs["conv_depth"] == 12 and report.backbone_kwargs["linear_depth"] == 3
    for i, layer in enumerate(convs):
        assert torch.equal(report.state_dict[f"convs.{i}.kernel"], layer["kernel"])
    for i, layer in enumerate(denses):
        assert torch.equal(report.state_dict[f"linear.{i}.q"], layer["q"])

    # the SLL reference code's single "model.{i}" Sequential, inside a NormalizedModel: one family for both kinds
    mixed = {}
    for i, layer in enumerate(convs):
        mixed.update({f"model.model.{i + 1}.{n}": v for n, v in layer.items()})
    for i, layer in enumerate(denses):  # after pad(0), convs(1..12), pool(13), flatten(14)
        mixed.update({f"model.model.{i + 15}.{n}": v for n, v in layer.items()})
    report = load_paper_checkpoint(_save({"model_state_dict": mixed}, tmp_path / "mixed.pth"))
    assert torch.equal(report.state_dict["convs.11.bias"], convs[11]["bias"])
    assert torch.equal(report.state_dict["linear.2.weight"], denses[2]["weight"])


# --- error paths ---------------------------------------------------------------------------------------------------


class _Custom:  # a class the safe unpickler refuses to construct
    def __init__(self) -> None:
        self.payload = 1


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_paper_checkpoint(tmp_path / "nope.pth")


def test_pickle_needing_code_execution_is_refused(tmp_path, layers):
    convs, denses = layers
    obj = _authors_checkpoint(_authors_state_dict(convs[:2], denses[:1]))
    obj["config"] = _Custom()
    path = tmp_path / "unsafe.pth"
    with open(path, "wb") as fh:  # torch.save would work too; pickle makes the intent explicit
        torch.save(obj, fh, pickle_module=pickle)
    with pytest.raises(ValueError, match=r"never executes code.*_Custom|_Custom.*never executes code"):
        load_paper_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"definitely not a torch file")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_paper_checkpoint(path)
    truncated = tmp_path / "truncated.pth"
    torch.save({"model_state_dict": {"a.kernel": torch.zeros(3)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_paper_checkpoint(truncated)


def test_missing_layer_is_named(tmp_path, layers):
    convs, denses = layers
    state = _authors_state_dict(convs[:6], denses[:2])
    for key in [k for k in state if ".convs.3." in k or ".base.1.3." in k]:
        del state[key]
    with pytest.raises(ValueError, match=r"module\.model\.(convs|base\.1)\.3 missing"):
        load_paper_checkpoint(_save(state, tmp_path / "gap.pth"))


def test_missing_tensor_is_named(tmp_path, layers):
    convs, denses = layers
    state = _authors_state_dict(convs[:2], denses[:2])
    del state["module.model.linear.2.q"]
    with pytest.raises(ValueError, match=r"'module\.model\.linear\.2'.*not an SLL residual dense layer"):
        load_paper_checkpoint(_save(state, tmp_path / "noq.pth"))


def test_conflicting_duplicates_are_an_error(tmp_path, layers):
    convs, denses = layers
    state = _authors_state_dict(convs[:4], denses[:2])
    state["module.model.base.1.2.kernel"] = state["module.model.base.1.2.kernel"] + 1e-3
    with pytest.raises(ValueError, match=r"different contents.*base\.1\.2\.kernel"):
        load_paper_checkpoint(_save(state, tmp_path / "conflict.pth"))


def test_normalization_buffers_are_checked(tmp_path, layers):
    convs, denses = layers
    state = _authors_state_dict(convs[:2], denses[:1])
    state["module.normalize.mean"], state["module.normalize.std"] = torch.zeros(3), torch.ones(3)
    report = load_paper_checkpoint(_save(state, tmp_path / "norm_ok.pth"))
    assert report.checked_keys == ["module.normalize.mean", "module.normalize.std"]
    state["module.normalize.std"] = torch.tensor([0.229, 0.224, 0.225])
    with pytest.raises(ValueError, match="std.*Lipschitz constant"):
        load_paper_checkpoint(_save(state, tmp_path / "norm_bad.pth"))


def test_unsupported_layers_and_inputs(tmp_path, layers):
    convs, denses = layers
    state = _authors_state_dict(convs[:2], denses[:1])
    state["module.model.last.weight"], state["module.model.last.bias"] = torch.randn(10, FEATURES), torch.zeros(10)
    path = _save(state, tmp_path / "head.pth")
    with pytest.raises(ValueError, match="classification head"):
        load_paper_checkpoint(path)
    assert load_paper_checkpoint(path, ignore=["*.last.*"]).ignored_keys == [
        "module.model.alpha", "module.model.last.bias", "module.model.last.weight"]
    with pytest.raises(ValueError, match="variant must be one of"):
        load_paper_checkpoint(path, variant="lipsim-fast")
    with pytest.raises(ValueError, match="no SLL convolution layers"):
        load_paper_checkpoint(_save({"epoch": 1, "model_state_dict": {"alpha": torch.ones(1)}}, tmp_path / "e.pth"))
    with pytest.raises(ValueError, match="no state dict"):
        load_paper_checkpoint(_save({"epoch": 1}, tmp_path / "empty.pth"))


# --- command line --------------------------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path, layers, capsys):
    convs, denses = layers
    ckpt = _save(_authors_checkpoint(_authors_state_dict(convs[:2], denses[:1])), tmp_path / "small.pth")
    out = tmp_path / "small.safetensors"
    assert main([str(ckpt), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "module.model.alpha" in err and f"wrote {out}" in err
    assert read_weights_metadata(out)["backbone_kwargs"]["conv_depth"] == 2
    assert main([str(ckpt), "-o", str(out)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    assert main([str(ckpt), "-o", str(out), "--force", "-q"]) == 0
    assert "alpha" in capsys.readouterr().err  # unknown keys are reported even with -q
    assert main([str(tmp_path / "missing.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- certificate validity of the paper's "normalize" projection ----------------------------------------------------


def test_normalize_projection_certifies_only_where_norm_at_least_one(tmp_path):
    convs, denses = _random_layers(seed=4, conv_depth=3, linear_depth=2)
    ckpt = _save(_authors_checkpoint(_authors_state_dict(convs, denses)), tmp_path / "cert.pth")
    with pytest.warns(UserWarning):
        weights = convert_checkpoint(ckpt, tmp_path / "cert.safetensors")
    metric = LipSim(weights=weights, projection="normalize")
    images = _images(3, seed=5)
    # A very dark reference has 0 < ||f|| < 1 (biases <= 0 keep the residual branches almost silent, so f is close
    # to the pooled image); a normal one has ||f|| >> 1.
    ref = torch.stack([0.002 * images[0], images[0]])
    x0, x1 = images[1:2].expand(2, -1, -1, -1), images[2:3].expand(2, -1, -1, -1)
    norm = metric.embed(ref, return_norm=True).augmented_norm
    assert 0.0 < norm[0] < 1.0 <= norm[1]
    cert = metric.certify_2afc(ref, x0, x1)
    assert cert.margin[0] > 1e-3  # a clear decision, so a zero radius comes from the norm condition alone
    assert cert.radius[0] == 0.0  # normalisation is not 1-Lipschitz inside the unit ball: nothing certified
    assert cert.radius[1] > 0.0
    assert cert.radius[1] <= norm[1] - 1.0 + 1e-6  # never beyond the point where the norm could fall to 1
    # the default "append" projection does certify the dark reference
    appended = LipSim(weights=weights, projection="append").certify_2afc(ref[:1], x0[:1], x1[:1])
    assert appended.radius[0] > 0.0


# --- the Table 1 example (examples/paper_table1.py) ----------------------------------------------------------------


def _load_example():
    path = Path(__file__).resolve().parents[1] / "examples" / "paper_table1.py"
    spec = importlib.util.spec_from_file_location("paper_table1", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # import-safe: defines functions only
    return module


def test_paper_table1_reports_missing_night_root(tmp_path, capsys):
    example = _load_example()
    assert example.main(["--night-root", str(tmp_path / "nights"), "--weights", "unused"]) == 2
    assert "no data.csv" in capsys.readouterr().err


def test_paper_table1_on_a_tiny_fake_night(tmp_path, layers, capsys):
    from PIL import Image

    convs, denses = layers
    ckpt = _save(_authors_checkpoint(_authors_state_dict(convs[:2], denses[:1])), tmp_path / "tiny.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights = convert_checkpoint(ckpt, tmp_path / "tiny.safetensors")
    root = tmp_path / "nights"
    g = torch.Generator().manual_seed(7)
    rows = [("0", "test", "True", 0.0), ("1", "test", "True", 1.0), ("2", "test", "False", 1.0),
            ("3", "train", "True", 1.0)]
    lines = ["id,left_vote,right_vote,ref_path,left_path,right_path,split,is_imagenet,votes"]
    for ident, split, imagenet, right in rows:
        paths = [f"ref/{ident}.png", f"distort/{ident}_0.png", f"distort/{ident}_1.png"]
        for p in paths:
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            pixels = (torch.rand(24, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / p)
        lines.append(f"{ident},{6 - 6 * right:.0f},{6 * right:.0f},{','.join(paths)},{split},{imagenet},6")
    (root / "data.csv").write_text("\n".join(lines) + "\n")

    example = _load_example()
    code = example.main(["--night-root", str(root), "--weights", str(weights), "--num-workers", "0",
                         "--batch-size", "2", "--device", "cpu", "--paper-formula"])
    assert code == 0
    table = {line.split("|")[1].strip(): [float(c) for c in line.split("|")[2:-1]]
             for line in capsys.readouterr().out.splitlines() if line.startswith("| test") or "combined" in line}
    assert table["test_imagenet"][0] == 2 and table["test_no_imagenet"][0] == 1 and table["combined"][0] == 3
    # combined = split scores weighted by size, every column
    for col in range(1, 8):
        weighted = (2 * table["test_imagenet"][col] + table["test_no_imagenet"][col]) / 3
        assert table["combined"][col] == pytest.approx(weighted, abs=0.01)
    # certified scores never exceed the natural score and shrink with eps
    for row in table.values():
        natural, cert = row[1], row[2:5]
        assert natural >= cert[0] >= cert[1] >= cert[2] >= 0
    # natural score recomputed directly with the library for the two ImageNet triplets
    from lipsim_metric.train.data import NightDataset

    metric = LipSim(weights=weights, projection="normalize")
    data = NightDataset(root, split="test_imagenet")
    batch = {k: torch.stack([data[i][k] for i in range(2)]) for k in ("ref", "x0", "x1", "target")}
    cert = metric.certify_2afc(batch["ref"], batch["x0"], batch["x1"])
    agree = torch.where(cert.d1 < cert.d0, batch["target"], 1 - batch["target"])
    assert table["test_imagenet"][1] == pytest.approx(100 * agree.mean().item(), abs=0.01)
