"""Tests for llmcourse.plots: figures are returned with the right data; the explorer reacts to widgets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from llmcourse import plots
from llmcourse.attention import causal_mask
from llmcourse.train import TrainHistory


def test_plot_attention_shows_the_weights():
    w = torch.softmax(torch.randn(3, 4), dim=-1)
    fig = plots.plot_attention(w, ["a", "b", "c"], ["w", "x", "y", "z"], title="t")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), w.numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert ax.get_title() == "t" and len(ax.texts) == 12  # annotated cells
    with pytest.raises(ValueError, match=r"2 query and 4 key tokens for weights of shape \(3, 4\)"):
        plots.plot_attention(w, ["a", "b"], ["w", "x", "y", "z"])
    with pytest.raises(ValueError, match="2-D"):
        plots.plot_attention(torch.rand(2, 3, 3), ["a", "b", "c"])


def test_plot_loss_curves_single_and_dict():
    h = TrainHistory(steps=[0, 10, 20], train_loss=[3.0, 2.0, 1.5], val_loss=[3.1, 2.2, 1.8])
    fig = plots.plot_loss_curves(h)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    np.testing.assert_allclose(lines[1].get_ydata(), [3.1, 2.2, 1.8])
    fig = plots.plot_loss_curves({"pre": h, "post": h})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["pre train", "pre val", "post train", "post val"]


def test_plot_lines_and_axes_argument():
    fig = Figure()
    ax = fig.add_subplot()
    out = plots.plot_lines([1, 2, 4], {"a": [1, 2, 3], "b": [2, 4, 8]}, xlabel="x", ylabel="y", logx=True, ax=ax)
    assert out is fig and ax.get_xscale() == "log" and len(ax.get_lines()) == 2
    with pytest.raises(ValueError, match="'b'"):
        plots.plot_lines([1, 2], {"b": [1, 2, 3]})


def test_attention_explorer_widgets_drive_the_plot():
    pytest.importorskip("ipywidgets")
    g = torch.Generator().manual_seed(0)
    tokens = ["the", "cat", "sat", "on", "the", "mat"]
    q, k = torch.randn(3, 6, 8, generator=g), torch.randn(3, 6, 8, generator=g)
    explorer = plots.attention_explorer(tokens, q, k)
    assert set(explorer.sliders) == {"head", "temperature"} and set(explorer.dropdowns) == {"mask"}
    first = explorer.image.get_array().copy()
    first_png = explorer.png.value
    np.testing.assert_allclose(first, torch.softmax(q[0] @ k[0].T / 8**0.5, -1).numpy(), rtol=1e-5, atol=1e-6)

    explorer.sliders["head"].value = 2  # as if the user moved the slider
    np.testing.assert_allclose(explorer.image.get_array(), torch.softmax(q[2] @ k[2].T / 8**0.5, -1).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert explorer.png.value != first_png  # the displayed picture was re-rendered

    explorer.update(mask="causal", temperature=10.0)
    w = explorer.weights
    assert np.all(w[~causal_mask(6).numpy()] == 0)  # nothing above the diagonal
    np.testing.assert_allclose(w.sum(-1), np.ones(6), rtol=1e-5)
    assert w[5].max() - w[5].min() < first[5].max() - first[5].min()  # hot softmax: flatter rows
    with pytest.raises(ValueError, match="'layer'"):
        explorer.update(layer=1)
    with pytest.raises(ValueError, match=r"T = 5 tokens; got q \(3, 6, 8\)"):
        plots.attention_explorer(tokens[:5], q, k)
