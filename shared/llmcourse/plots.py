"""Matplotlib figures for the notebooks, and an interactive attention explorer (ipywidgets).

Every function builds a ``matplotlib.figure.Figure`` directly (not through ``pyplot``) and returns it:
nothing is shown behind your back, no global figure list grows, and in Jupyter the figure displays when
it is the value of the cell (or with ``display(fig)``). Pass ``ax=`` to draw into your own axes.

Used across ``modules/01_transformers`` (attention maps and the explorer in ``01_attention.py``, loss
curves in ``04_pretraining.py``).
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["plot_attention", "plot_loss_curves", "plot_lines", "attention_explorer", "AttentionExplorer"]


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _new_axes(ax: Axes | None, figsize=(5, 4)) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    if _in_ipython():
        import matplotlib.pyplot  # noqa: F401 - loads Jupyter's inline backend, which teaches IPython to show Figures
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def plot_attention(weights, tokens_q: Sequence[str], tokens_k: Sequence[str] | None = None,
                   ax: Axes | None = None, title: str | None = None, annotate: bool | None = None) -> Figure:
    """Heat map of one attention matrix ``weights`` (T, S): row = query token, column = key token.

    ``annotate`` writes the values in the cells (default: when the matrix is at most 10 x 10).
    """
    w = _to_numpy(weights)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D (T, S); got shape {w.shape} (select a batch and head)")
    tokens_k = tokens_q if tokens_k is None else tokens_k
    if (len(tokens_q), len(tokens_k)) != w.shape:
        raise ValueError(f"{len(tokens_q)} query and {len(tokens_k)} key tokens for weights of shape {w.shape}")
    fig, ax = _new_axes(ax, figsize=(1.5 + 0.45 * w.shape[1], 1.0 + 0.45 * w.shape[0]))
    image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(w.max())), aspect="auto")
    ax.set_xticks(range(len(tokens_k)), [repr(t)[1:-1] for t in tokens_k], rotation=90)
    ax.set_yticks(range(len(tokens_q)), [repr(t)[1:-1] for t in tokens_q])
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if annotate or (annotate is None and max(w.shape) <= 10):
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if w[i, j] < 0.6 * w.max() else "black")
    fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        ax.set_title(title)
    return fig


def plot_loss_curves(histories, ax: Axes | None = None, title: str | None = None, logy: bool = False) -> Figure:
    """Train (dashed) and validation (solid) loss against steps, for one ``TrainHistory`` or a dict
    ``{label: TrainHistory}`` (any object with ``steps``, ``train_loss`` and ``val_loss`` lists)."""
    if not isinstance(histories, Mapping):
        histories = {"": histories}
    fig, ax = _new_axes(ax, figsize=(6, 4))
    for i, (label, h) in enumerate(histories.items()):
        color = f"C{i}"
        prefix = f"{label} " if label else ""
        ax.plot(h.steps, h.train_loss, "--", color=color, label=f"{prefix}train")
        if not np.all(np.isnan(np.asarray(h.val_loss, dtype=float))):
            ax.plot(h.steps, h.val_loss, "-", color=color, label=f"{prefix}val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return fig


def plot_lines(x, ys: Mapping[str, Sequence[float]], xlabel: str = "", ylabel: str = "", logx: bool = False,
               logy: bool = False, ax: Axes | None = None, title: str | None = None, marker: str = "o") -> Figure:
    """One line per entry of ``ys`` ({label: values}) against the shared ``x``."""
    x = _to_numpy(x)
    fig, ax = _new_axes(ax, figsize=(6, 4))
    for label, y in ys.items():
        y = _to_numpy(y)
        if y.shape != x.shape:
            raise ValueError(f"series {label!r} has {y.shape} values for x of shape {x.shape}")
        ax.plot(x, y, marker=marker, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(ys) > 1 or next(iter(ys), ""):
        ax.legend()
    if title:
        ax.set_title(title)
    return fig


class AttentionExplorer:
    """Interactive attention map: sliders for the head and the softmax temperature, a dropdown for the
    mask. ``weights = softmax(q_h k_h^T / (sqrt(D) * temperature) + mask)``.

    Attributes: ``sliders`` ({"head", "temperature"}), ``dropdowns`` ({"mask"}), ``widget`` (the box to
    display), ``figure``, ``image`` (the matplotlib image), ``png`` (the image widget showing the figure)
    and ``weights`` (the current (T, T) array).
    Change a widget, or call :meth:`update`, and the plot follows.
    """

    MASKS = ("none", "causal", "local (window 3)")

    def __init__(self, tokens: Sequence[str], q: torch.Tensor, k: torch.Tensor | None = None,
                 title: str | None = None):
        import ipywidgets as widgets  # lazy: only the explorer needs it

        q = torch.as_tensor(q, dtype=torch.float32)
        k = q if k is None else torch.as_tensor(k, dtype=torch.float32)
        if q.ndim == 2:  # (T, D): a single head
            q, k = q[None], k[None]
        if q.ndim != 3 or k.shape != q.shape or q.shape[1] != len(tokens):
            raise ValueError(f"q and k must be (H, T, D) with T = {len(tokens)} tokens; got q {tuple(q.shape)}, "
                             f"k {tuple(k.shape)}")
        self.tokens, self.q, self.k, self.title = list(tokens), q, k, title
        self.sliders = {
            "head": widgets.IntSlider(value=0, min=0, max=q.shape[0] - 1, description="head"),
            "temperature": widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.05,
                                                  description="temperature"),
        }
        self.dropdowns = {"mask": widgets.Dropdown(options=self.MASKS, value="none", description="mask")}
        self.png = widgets.Image(format="png")  # the rendered figure, works in any Jupyter front end
        self.figure = plot_attention(np.zeros((len(tokens), len(tokens))), self.tokens, annotate=False)
        self.image = self.figure.axes[0].images[0]
        for control in (*self.sliders.values(), *self.dropdowns.values()):
            control.observe(lambda change: self.render(), names="value")
        self.widget = widgets.VBox([widgets.HBox([*self.sliders.values(), *self.dropdowns.values()]), self.png])
        self.render()

    def compute(self, head: int, temperature: float, mask: str) -> np.ndarray:
        """The (T, T) attention weights for these settings."""
        from .attention import causal_mask, scaled_dot_product_attention

        T, D = self.q.shape[1], self.q.shape[2]
        if mask == "causal":
            m = causal_mask(T)
        elif mask.startswith("local"):
            idx = torch.arange(T)
            m = causal_mask(T) & (idx[:, None] - idx[None, :] < 3)  # the last 3 positions
        else:
            m = None
        scale = 1.0 / (D**0.5 * temperature)
        _, weights = scaled_dot_product_attention(self.q[head], self.k[head], self.k[head], mask=m, scale=scale)
        return weights.numpy()

    def render(self) -> None:
        """Recompute the weights from the widget values and redraw."""
        values = self.values
        self.weights = self.compute(**values)
        self.image.set_data(self.weights)
        self.image.set_clim(0.0, max(1e-9, float(self.weights.max())))
        ax = self.figure.axes[0]
        ax.set_title(self.title or f"head {values['head']}, T={values['temperature']:.2f}, mask={values['mask']}")
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90)
        self.png.value = buffer.getvalue()

    @property
    def values(self) -> dict:
        return {"head": self.sliders["head"].value, "temperature": self.sliders["temperature"].value,
                "mask": self.dropdowns["mask"].value}

    def update(self, **values) -> None:
        """Set widget values programmatically, e.g. ``explorer.update(head=2, mask="causal")``."""
        controls = {**self.sliders, **self.dropdowns}
        unknown = set(values) - controls.keys()
        if unknown:
            raise ValueError(f"unknown controls {sorted(unknown)}; choose from {sorted(controls)}")
        for name, value in values.items():
            controls[name].value = value  # the observer re-renders

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def attention_explorer(tokens: Sequence[str], q: torch.Tensor, k: torch.Tensor | None = None,
                       title: str | None = None) -> AttentionExplorer:
    """Build an :class:`AttentionExplorer` for a sentence: ``tokens`` (T strings), queries ``q`` and keys
    ``k`` (H, T, D) or (T, D) (``k`` defaults to ``q``). Get q and k from a model with
    ``MultiHeadAttention.qkv``, e.g. ``q, k, _ = gpt.h[0].attn.qkv(gpt.h[0].ln_1(gpt.embed(idx)))`` and
    pass ``q[0], k[0]``. Display it as the last expression of a cell."""
    return AttentionExplorer(tokens, q, k, title)
