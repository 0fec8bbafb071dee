"""Each plotting function writes a real PNG of the expected size, for tiny and larger inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aver.train.plots import DPI, plot_attention, plot_confusion, plot_learning_curves


def _open(path) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 1000
    image = Image.open(path)
    image.load()  # decodes the whole file: a truncated PNG fails here
    assert image.format == "PNG"
    return image


def _is_not_blank(image: Image.Image) -> bool:
    pixels = np.asarray(image.convert("L"))
    return pixels.std() > 5  # more than a uniform background


@pytest.mark.parametrize("n_classes", [2, 8])
@pytest.mark.parametrize("normalise", [True, False])
def test_plot_confusion(tmp_path, n_classes, normalise):
    rng = np.random.default_rng(n_classes)
    cm = rng.integers(0, 20, (n_classes, n_classes))
    cm[-1] = 0  # a class with no true samples must not produce NaN percentages
    names = [f"emotion{i}" for i in range(n_classes)]
    out = plot_confusion(cm.tolist(), names, tmp_path / "sub" / "cm.png", normalise=normalise, title="t")
    image = _open(out)
    side = 0.6 * n_classes + 2.5
    assert image.size == (round((side + 1.0) * DPI), round(side * DPI))
    assert _is_not_blank(image)


def test_plot_confusion_grows_with_classes(tmp_path):
    small = _open(plot_confusion(np.eye(2), ["a", "b"], tmp_path / "a.png"))
    large = _open(plot_confusion(np.eye(8), list("abcdefgh"), tmp_path / "b.png"))
    assert large.size[0] > small.size[0] and large.size[1] > small.size[1]


def test_plot_confusion_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="square"):
        plot_confusion(np.zeros((2, 3)), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(np.zeros((3, 3)), ["a", "b"], tmp_path / "x.png")


@pytest.mark.parametrize("epochs", [2, 8])
@pytest.mark.parametrize("with_heads", [False, True])
def test_plot_learning_curves(tmp_path, epochs, with_heads):
    history = []
    for e in range(epochs):
        entry = {"epoch": e, "train_loss": 2.0 / (e + 1), "val_loss": 2.2 / (e + 1), "val_metric": 0.1 * e}
        if with_heads:
            entry |= {"val_video": 0.08 * e, "val_audio": 0.09 * e, "val_fusion": 0.1 * e}
        history.append(entry)
    history[0]["val_loss"] = None  # a missing value leaves a gap rather than failing
    image = _open(plot_learning_curves(history, tmp_path / "curves.png", metric_name="F1-macro"))
    assert image.size == (11 * DPI, 4 * DPI)
    assert _is_not_blank(image)


def test_plot_learning_curves_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_learning_curves([], tmp_path / "x.png")


@pytest.mark.parametrize(("t", "m"), [(2, 2), (20, 8)])
def test_plot_attention(tmp_path, t, m):
    g = torch.Generator().manual_seed(t)
    attn_video = torch.softmax(torch.randn(t, m, generator=g), dim=1).requires_grad_()
    attn_audio = np.asarray(torch.softmax(torch.randn(m, t, generator=g), dim=1))
    image = _open(plot_attention(attn_video, attn_audio, tmp_path / "attn.png", title="angry"))
    assert image.size == (11 * DPI, 450)
    assert _is_not_blank(image)


def test_plot_attention_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="disagree"):
        plot_attention(np.ones((4, 3)), np.ones((4, 3)), tmp_path / "x.png")
