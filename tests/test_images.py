"""Tests for lipsim_metric.images: decoding, finding and pairing images, and the pair dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lipsim_metric.images import (
    IMAGE_EXTENSIONS,
    ImagePairDataset,
    find_images,
    load_image,
    pair_images,
    pair_input_norm,
)
from lipsim_metric.preprocess import input_operator_norm, to_backbone_input

RNG = np.random.default_rng(0)


def noise(height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def save_rgb(path: Path, height: int = 24, width: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise(height, width)).save(path)
    return path


# --- load_image --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, ext",
    [("RGB", "png"), ("RGB", "jpg"), ("L", "png"), ("1", "png"), ("P", "png"), ("P", "gif"), ("RGBA", "png"),
     ("LA", "png"), ("CMYK", "jpg"), ("CMYK", "tiff"), ("RGB", "webp"), ("RGB", "bmp"), ("I;16", "png")],
)
def test_load_image_modes_give_rgb_in_unit_range(tmp_path: Path, mode: str, ext: str) -> None:
    if mode == "I;16":
        img = Image.fromarray(noise(20, 30, 1).astype(np.uint16) * 257)
    else:
        img = Image.fromarray(noise(20, 30)).convert(mode)
    path = tmp_path / f"img.{ext}"
    img.save(path)
    x = load_image(path)
    assert x.dtype == torch.float32
    assert tuple(x.shape) == (3, 20, 30)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_load_image_rgb_values_exact(tmp_path: Path) -> None:
    array = noise(10, 12)
    Image.fromarray(array).save(tmp_path / "a.png")
    expected = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    assert torch.equal(load_image(tmp_path / "a.png"), expected)


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    Image.fromarray(noise(16, 16, 1)).save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_16bit_keeps_precision(tmp_path: Path) -> None:
    array = np.full((10, 10), 32768, dtype=np.uint16)
    array[0, 0] = 1  # below 8-bit resolution: would be lost by an 8-bit conversion
    Image.fromarray(array).save(tmp_path / "deep.png")
    x = load_image(tmp_path / "deep.png")
    assert float(x[0, 5, 5]) == pytest.approx(32768 / 65535)
    assert float(x[0, 0, 0]) == pytest.approx(1 / 65535)


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[:5] = (255, 0, 0, 255)  # opaque red
    rgba[5:] = (0, 0, 0, 0)  # transparent black: invisible, must not count as black
    Image.fromarray(rgba).save(tmp_path / "t.png")
    x = load_image(tmp_path / "t.png")
    assert torch.equal(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(x[:, 9, 9], torch.ones(3))


def test_palette_transparency_is_composited(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (0, 0, 5, 10))
    img.save(tmp_path / "p.png", transparency=0)
    x = load_image(tmp_path / "p.png")
    assert torch.equal(x[:, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(x[:, 0, 9], torch.ones(3))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.fromarray(noise(20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert tuple(load_image(tmp_path / "rot.jpg").shape) == (3, 30, 20)


def test_corrupt_file_raises_value_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.png"
    path.write_bytes(RNG.bytes(500))
    with pytest.raises(ValueError, match="corrupt.png"):
        load_image(path)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file_raises_value_error(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"whole.{ext}"
    Image.fromarray(noise(64, 64)).save(path)
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"cut.{ext}.*truncated"):
        load_image(cut)


def test_missing_file_and_folder_raise_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_image(tmp_path)


# --- find_images / pair_images -------------------------------------------------------------------------------------


def test_find_images_recursive_relative_and_filtered(tmp_path: Path) -> None:
    save_rgb(tmp_path / "b.png")
    save_rgb(tmp_path / "A.JPG")
    save_rgb(tmp_path / "sub" / "deeper" / "c.png")
    save_rgb(tmp_path / ".hidden" / "d.png")
    save_rgb(tmp_path / "._e.png")
    (tmp_path / "notes.txt").write_text("not an image")
    found = find_images(tmp_path)
    assert [p.as_posix() for p in found] == ["A.JPG", "b.png", "sub/deeper/c.png"]
    assert all(not p.is_absolute() for p in found)
    assert [p.as_posix() for p in find_images(tmp_path, recursive=False)] == ["A.JPG", "b.png"]
    assert ".png" in IMAGE_EXTENSIONS and ".jpeg" in IMAGE_EXTENSIONS


def test_find_images_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        find_images(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        find_images(save_rgb(tmp_path / "x.png"))


def test_pairing_is_by_relative_path_not_sort_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ["1.png", "2.png", "3.png", "x/same.png", "y/only.png"]:
        save_rgb(a / name)
    for name in ["2.png", "3.png", "4.png", "y/same.png"]:
        save_rgb(b / name)
    pairs, only_a, only_b = pair_images(a, b)
    # Sort-order pairing would match 1.png with 2.png; by path only 2 and 3 pair.
    assert [(pa.relative_to(a).as_posix(), pb.relative_to(b).as_posix(), n) for pa, pb, n in pairs] == [
        ("2.png", "2.png", "2.png"), ("3.png", "3.png", "3.png")]
    assert only_a == ["1.png", "x/same.png", "y/only.png"]
    assert only_b == ["4.png", "y/same.png"]


def test_pairing_falls_back_to_unique_extension_change(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    save_rgb(a / "sub" / "1.png")
    save_rgb(b / "sub" / "1.jpg")
    save_rgb(a / "2.png")  # ambiguous: two candidates in b
    save_rgb(b / "2.jpg")
    save_rgb(b / "2.webp")
    pairs, only_a, only_b = pair_images(a, b)
    assert [(pa, pb, n) for pa, pb, n in pairs] == [(a / "sub" / "1.png", b / "sub" / "1.jpg", "sub/1.png")]
    assert only_a == ["2.png"]
    assert only_b == ["2.jpg", "2.webp"]


# --- dataset and radius accounting ---------------------------------------------------------------------------------


def test_dataset_resizes_like_lipsim_and_reports_shapes(tmp_path: Path) -> None:
    pa, pb = save_rgb(tmp_path / "a.png", 30, 50), save_rgb(tmp_path / "b.png", 64, 40)
    item = ImagePairDataset([(pa, pb, "a.png")], size=32)[0]
    assert item["index"] == 0 and "error" not in item
    assert item["shape0"] == (30, 50) and item["shape1"] == (64, 40)
    assert torch.equal(item["x0"], to_backbone_input(load_image(pa)[None], 32)[0])
    assert torch.equal(item["x1"], to_backbone_input(load_image(pb)[None], 32)[0])
    assert tuple(item["x0"].shape) == (3, 32, 32)


def test_dataset_returns_error_records_and_keeps_the_rest_with_workers(tmp_path: Path) -> None:
    good = save_rgb(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(RNG.bytes(200))
    tiny = save_rgb(tmp_path / "tiny.png", 4, 4)
    pairs = [(good, good), (good, bad), (tiny, good), (good, tmp_path / "gone.png"), (good, good)]
    loader = DataLoader(ImagePairDataset(pairs, size=16), batch_size=2, num_workers=2, collate_fn=list)
    records = {r["index"]: r for batch in loader for r in batch}
    assert sorted(records) == [0, 1, 2, 3, 4]
    assert "x0" in records[0] and "x0" in records[4]
    assert "bad.png" in records[1]["error"]
    assert "tiny.png" in records[2]["error"] and "4x4" in records[2]["error"]
    assert "gone.png" in records[3]["error"]


def test_dataset_rejects_tiny_size() -> None:
    with pytest.raises(ValueError, match="size must be at least"):
        ImagePairDataset([], size=2)


def test_pair_input_norm() -> None:
    assert pair_input_norm((224, 224), (224, 224), 224) == 1.0
    assert pair_input_norm((64, 48), (64, 48), 224) == input_operator_norm(64, 48, 3, 224, "[0,1]")
    expected = max(input_operator_norm(64, 48, 3, 224, "[0,1]"), input_operator_norm(120, 90, 3, 224, "[0,1]"))
    assert pair_input_norm((64, 48), (120, 90), 224) == expected == pair_input_norm((120, 90), (64, 48), 224)


# --- issue 16: huge images, the pixel limit, permissions, symlinks --------------------------------------------------


def test_load_image_resized_equals_lipsim_resize(tmp_path: Path) -> None:
    from lipsim_metric.images import load_image_resized

    path = save_rgb(tmp_path / "a.png", 50, 70)
    image, shape, channels = load_image_resized(path, 32)
    assert shape == (50, 70) and channels == 3
    assert torch.equal(image, to_backbone_input(load_image(path)[None], 32, "[0,1]")[0])
    Image.fromarray(noise(40, 30, 1)).save(tmp_path / "gray.png")
    assert load_image_resized(tmp_path / "gray.png", 32)[2] == 1  # a gray file: radii are stated per gray value


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_strip_resize_of_large_images_matches_the_full_resize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              mode: str) -> None:
    """Huge images are resized strip by strip from the 8-bit decode; same operator, equal up to float rounding."""
    import lipsim_metric.images as io_module

    path = tmp_path / "big.png"
    Image.fromarray(noise(301, 457)).convert(mode).save(path)
    monkeypatch.setattr(io_module, "STRIP_RESIZE_PIXELS", 1000)  # force the strip path on a small image
    monkeypatch.setattr(io_module, "_STRIP_VALUES", 3 * 457 * 17)  # 17-row strips, the last one shorter
    image, shape, _ = io_module.load_image_resized(path, 64)
    expected = to_backbone_input(load_image(path)[None], 64, "[0,1]")[0]
    assert shape == (301, 457)
    assert torch.allclose(image, expected, atol=2e-6), float((image - expected).abs().max())


def test_pixel_limit_is_named_not_called_corrupt(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    from lipsim_metric.images import ImageTooLargeError

    path = save_rgb(tmp_path / "a.png", 20, 30)
    with pytest.raises(ImageTooLargeError, match=r"30x20 = 600 pixels, above the pixel limit of 599") as info:
        load_image(path, max_pixels=599)
    assert "corrupt" not in str(info.value) and "max_pixels=600" in str(info.value)
    assert load_image(path, max_pixels=600).shape == (3, 20, 30)
    limit = PILImage.MAX_IMAGE_PIXELS
    PILImage.MAX_IMAGE_PIXELS = 100  # Pillow's own guard (a module global) is replaced, and restored afterwards
    try:
        assert load_image(path, max_pixels=0).shape == (3, 20, 30)
        assert PILImage.MAX_IMAGE_PIXELS == 100
    finally:
        PILImage.MAX_IMAGE_PIXELS = limit


def test_unreadable_file_raises_permission_error_with_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    path = save_rgb(tmp_path / "a.png")
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # tests may run as root, who can read anything
    with pytest.raises(PermissionError, match="permission denied; make it readable"):
        load_image(path)
    record = ImagePairDataset([(path, path)], size=16)[0]
    assert "permission denied" in record["error"] and "corrupt" not in record["error"]


def test_find_images_follows_folder_links_and_reports_loops_and_broken_links(tmp_path: Path) -> None:
    root, other = tmp_path / "root", tmp_path / "other"
    save_rgb(root / "1.png")
    save_rgb(other / "deep" / "2.png")
    (root / "other").symlink_to(other, target_is_directory=True)
    (root / "sub").mkdir()
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)
    (root / "dead.png").symlink_to(tmp_path / "nowhere.png")
    problems: list[str] = []
    found = [p.as_posix() for p in find_images(root, problems=problems)]
    assert found == ["1.png", "other/deep/2.png"]
    assert any("link loop" in p and "sub/back" in p for p in problems)
    assert any("broken symbolic link" in p and "dead.png" in p for p in problems)


def test_find_images_reports_unlistable_subfolders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    save_rgb(tmp_path / "ok" / "1.png")
    save_rgb(tmp_path / "locked" / "2.png")
    scandir = os.scandir

    def locked(path):  # noqa: ANN001, ANN202
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", locked)
    problems: list[str] = []
    assert [p.as_posix() for p in find_images(tmp_path, problems=problems)] == ["ok/1.png"]
    assert len(problems) == 1 and "cannot list folder" in problems[0] and "Permission denied" in problems[0]
