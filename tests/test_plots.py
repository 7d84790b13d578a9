"""Tests of yolo11_jax.plots: PNGs written, figure contents, IoU-variant numbers and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.patches import Rectangle

from yolo11_jax import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO_ROOT = Path(__file__).resolve().parents[1]


def read_png(path, expected_hw: tuple[int, int]) -> np.ndarray:
    """Check ``path`` is a non-empty PNG of ``expected_hw`` pixels that is not blank; return its pixels."""
    path = Path(path)
    assert path.is_file(), path
    data = path.read_bytes()
    assert len(data) > 1000, len(data)
    assert data[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4), img.shape
    assert img.shape[:2] == expected_hw, img.shape
    assert float(img[..., :3].std()) > 0.01, "image is blank"
    return img


def loss_history(n: int = 5, with_epoch: bool = True) -> list[dict]:
    hist = []
    for i in range(n):
        h = {
            "total_loss": 10.0 / (i + 1),
            "cls_loss": 4.0 / (i + 1),
            "box_loss": 3.0 / (i + 1),
            "dfl_loss": 3.0 / (i + 1) + 0.1,
        }
        if with_epoch:
            h["epoch"] = i + 10
        hist.append(h)
    return hist


# ----------------------------------------------------------------------------- loss curves


def test_plot_loss_curves_writes_png(tmp_path):
    out = tmp_path / "sub" / "loss.png"
    ret = plots.plot_loss_curves(loss_history(), out)
    assert ret == str(out)
    read_png(out, (400, 2000))  # figsize (20, 4) at 100 dpi


def test_loss_curves_figure_contents():
    hist = loss_history()
    fig = plots.loss_curves_figure(hist, title="My Losses")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["Total Loss", "Classification Loss", "Box (CIoU) Loss", "DFL Loss"]
    assert fig._suptitle.get_text() == "My Losses"
    for ax, key in zip(axes, ("total_loss", "cls_loss", "box_loss", "dfl_loss")):
        (line,) = ax.get_lines()
        np.testing.assert_array_equal(line.get_xdata(), [10, 11, 12, 13, 14])
        np.testing.assert_allclose(line.get_ydata(), [h[key] for h in hist])
        assert line.get_color() == "b" and line.get_marker() == "o" and line.get_linestyle() == "-"


def test_loss_curves_without_x_key_uses_1_to_n():
    fig = plots.loss_curves_figure(loss_history(4, with_epoch=False))
    np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_xdata(), [1, 2, 3, 4])
    fig = plots.loss_curves_figure(loss_history(3), x_key="step")
    np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_xdata(), [1, 2, 3])


# ----------------------------------------------------------------------------- sample batch


def sample_batch(b: int = 3, h: int = 40, w: int = 60, m: int = 4):
    rng = np.random.default_rng(0)
    images = rng.random((b, h, w, 3)).astype(np.float32)
    boxes = np.zeros((b, m, 4), np.float32)
    mask = np.zeros((b, m), bool)
    labels = np.zeros((b, m), np.int32)
    # image 0: two boxes of different classes; image 1: none (all-False row); image 2: one box.
    boxes[0, 0] = [0.5, 0.5, 0.5, 0.25]
    boxes[0, 1] = [0.25, 0.75, 0.2, 0.1]
    mask[0, :2] = True
    labels[0, :2] = [1, 2]
    boxes[1] = [0.5, 0.5, 0.3, 0.3]  # padding rows with non-zero boxes must still be ignored
    labels[1] = 7
    boxes[2, 3] = [0.1, 0.9, 0.2, 0.2]
    mask[2, 3] = True
    labels[2, 3] = 5
    return images, boxes, mask, labels


def rectangles(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_plot_sample_batch_writes_png(tmp_path):
    images, boxes, mask, labels = sample_batch()
    out = plots.plot_sample_batch(images, boxes, mask, labels, tmp_path / "batch.png", max_images=2)
    read_png(out, (500, 1000))  # figsize (5 * 2, 5) at 100 dpi


def test_sample_batch_figure_boxes_titles_and_empty_row():
    images, boxes, mask, labels = sample_batch()
    names = ["person", "bicycle", "car"]
    fig = plots.sample_batch_figure(images, boxes, mask, labels, class_names=names, max_images=8)
    axes = fig.axes
    assert len(axes) == 3  # min(B, max_images)
    assert [ax.get_title() for ax in axes] == ["Image 0: 2 objects", "Image 1: 0 objects", "Image 2: 1 objects"]
    assert all(not ax.axison for ax in axes)
    assert fig._suptitle.get_text() == "Training Data"

    # Pixel coordinates from the (non-square) image shape: W = 60, H = 40.
    r0 = rectangles(axes[0])
    assert len(r0) == 2
    np.testing.assert_allclose(r0[0].get_xy(), [(0.5 - 0.25) * 60, (0.5 - 0.125) * 40])
    np.testing.assert_allclose([r0[0].get_width(), r0[0].get_height()], [0.5 * 60, 0.25 * 40])
    np.testing.assert_allclose(r0[1].get_xy(), [(0.25 - 0.1) * 60, (0.75 - 0.05) * 40])
    assert r0[0].get_edgecolor() != r0[1].get_edgecolor()  # one colour per class
    assert sorted(t.get_text() for t in axes[0].texts) == ["bicycle", "car"]

    assert len(rectangles(axes[1])) == 0 and len(axes[1].texts) == 0  # all-False mask row
    assert len(rectangles(axes[2])) == 1
    assert [t.get_text() for t in axes[2].texts] == ["5"]  # no name for class 5 -> the id


def test_sample_batch_max_images_and_single_panel(tmp_path):
    images, boxes, mask, labels = sample_batch()
    fig = plots.sample_batch_figure(images, boxes, mask, labels, max_images=1)
    assert len(fig.axes) == 1
    assert tuple(fig.get_size_inches()) == (5.0, 5.0)
    # An image whose only row is all False still saves.
    out = plots.plot_sample_batch(images[1:2], boxes[1:2], mask[1:2], labels[1:2], tmp_path / "empty.png")
    read_png(out, (500, 500))


def test_sample_batch_rejects_bad_shapes():
    images, boxes, mask, labels = sample_batch()
    with pytest.raises(ValueError):
        plots.sample_batch_figure(images, boxes[:, :, :3], mask, labels)
    with pytest.raises(ValueError):
        plots.sample_batch_figure(images, boxes, mask, labels, max_images=0)


# ----------------------------------------------------------------------------- IoU variants


@pytest.fixture(scope="module")
def curves():
    return plots.iou_variant_curves()


def test_iou_variant_curves_shapes(curves):
    offsets, vals = curves
    np.testing.assert_allclose(offsets, np.linspace(0, 6, 50))
    assert set(vals) == {"iou", "giou", "diou", "ciou"}
    for v in vals.values():
        assert v.shape == (50,) and np.all(np.isfinite(v))


def test_iou_variant_curves_values(curves):
    offsets, vals = curves
    for mode, v in vals.items():
        assert v[0] > 1 - 1e-6 and v[0] <= 1.0, (mode, v[0])  # identical boxes: 9 / (9 + eps)
    past = offsets >= 3
    assert past.sum() == 25
    assert np.all(vals["iou"][past] == 0.0)
    assert np.all(vals["iou"][~past] > 0.0)
    for mode in ("giou", "diou", "ciou"):
        assert np.all(np.diff(vals[mode][past]) < 0), mode
        assert np.all(vals[mode][past] < 0), mode
    np.testing.assert_allclose(vals["ciou"], vals["diou"], atol=1e-6, rtol=0)
    # Closed forms for two 3x3 boxes a distance d apart horizontally (d >= 3: disjoint).
    d = offsets[past]
    np.testing.assert_allclose(vals["giou"][past], -(1 - 18 / (3 * (3 + d))), atol=1e-6)
    np.testing.assert_allclose(vals["diou"][past], -(d**2) / ((3 + d) ** 2 + 9), atol=1e-6)
    d = offsets[~past]
    np.testing.assert_allclose(vals["iou"][~past], (3 - d) * 3 / (18 - (3 - d) * 3), atol=1e-6)


def test_iou_variant_curves_one_batched_call_per_mode(monkeypatch):
    import yolo11_jax.iou as iou_mod

    calls = []
    real = iou_mod.bbox_iou

    def spy(box1, box2, mode="ciou", *a, **k):
        calls.append((tuple(box1.shape), tuple(box2.shape), mode))
        return real(box1, box2, mode, *a, **k)

    monkeypatch.setattr(iou_mod, "bbox_iou", spy)
    plots.iou_variant_curves()
    assert calls == [((1, 4), (50, 4), m) for m in ("iou", "giou", "diou", "ciou")]


def test_plot_iou_variants(tmp_path, curves):
    out = plots.plot_iou_variants(tmp_path / "iou.png", iou_fn=lambda: curves)
    read_png(out, (500, 2000))  # figsize (20, 5) at 100 dpi
    fig = plots.iou_variants_figure(iou_fn=lambda: curves)
    assert [ax.get_title() for ax in fig.axes] == ["IOU", "GIOU", "DIOU", "CIOU"]
    assert fig._suptitle.get_text() == "IoU Variants: Response to Horizontal Box Translation"
    for ax, mode in zip(fig.axes, ("iou", "giou", "diou", "ciou")):
        assert ax.get_xlabel() == "Horizontal offset" and ax.get_ylabel() == f"{mode} value"
        curve, hline = ax.get_lines()
        np.testing.assert_allclose(curve.get_ydata(), curves[1][mode])
        np.testing.assert_array_equal(hline.get_ydata(), [0, 0])
        assert hline.get_linestyle() == "--"


# ----------------------------------------------------------------------------- mAP


def test_plot_map_curve(tmp_path):
    hist = [
        {"epoch": 1, "mAP": 0.1, "AP50": 0.2},
        {"epoch": 2, "mAP": None, "AP50": None},  # no evaluation this epoch
        {"epoch": 3, "mAP": 0.3, "AP50": 0.5},
        {"epoch": 4, "total_loss": 1.0},
    ]
    out = plots.plot_map_curve(hist, tmp_path / "map.png")
    read_png(out, (500, 800))
    fig = plots.map_curve_figure(hist)
    (ax,) = fig.axes
    assert ax.get_ylim() == (0.0, 1.0)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"mAP", "AP50"}
    np.testing.assert_array_equal(lines["mAP"].get_xdata(), [1, 3])
    np.testing.assert_allclose(lines["AP50"].get_ydata(), [0.2, 0.5])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mAP", "AP50"]

    fig = plots.map_curve_figure(hist, keys=("mAP", "AP75"))
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["mAP"]
    with pytest.raises(ValueError):
        plots.map_curve_figure(hist, keys=("AP75",))


# ----------------------------------------------------------------------------- CLI


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        plots.main(["--help"])
    assert exc.value.code == 0
    assert "iou" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        plots.main([])  # a command is required
    assert exc.value.code == 2


def test_cli_iou_subprocess(tmp_path):
    out = tmp_path / "iou_variants.png"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run(
        [sys.executable, "-m", "yolo11_jax.plots", "iou", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    read_png(out, (500, 2000))


def test_plotting_never_imports_pyplot(tmp_path, monkeypatch, curves):
    # sys.modules[name] = None makes `import name` raise ImportError: any pyplot use would fail here.
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    images, boxes, mask, labels = sample_batch()
    plots.plot_iou_variants(tmp_path / "a.png", iou_fn=lambda: curves)
    plots.plot_sample_batch(images, boxes, mask, labels, tmp_path / "b.png")
    plots.plot_loss_curves(loss_history(), tmp_path / "c.png")
    plots.plot_map_curve([{"epoch": 1, "mAP": 0.5}], tmp_path / "d.png")
    assert len(list(tmp_path.glob("*.png"))) == 4
