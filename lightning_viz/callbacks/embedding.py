"""EmbeddingCallback: a fixed sample's penultimate features, to TensorBoard's projector and as a 2-D PCA scatter."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from lightning_viz.core import targets
from lightning_viz.core.base import VizCallback, WhenFull, check_choice, check_int, step_stem
from lightning_viz.core.embedding import POOLS, Pool, features_of, pca_2d
from lightning_viz.core.errors import check_names
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.layer_names import default_layers, named_layers, one_layer
from lightning_viz.core.model_input import ModelInput, first_float_tensor
from lightning_viz.core.records import Reduced, Sums
from lightning_viz.core.sample_batch import FixedSample, inference, on_model, shrunk_images
from lightning_viz.core.schedule import Schedule
from lightning_viz.core.sinks import fan_out
from lightning_viz.core.warn import VizWarning, short_error, warn_once
from lightning_viz.render.embedding import render_embedding

CHUNK = 64  # examples per forward pass of the fixed sample
DEFAULT_SAMPLE = 256
# modules whose features lie along the last dimension (the rest: along the second, as a convolution's channels)
LAST_DIM = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.MultiheadAttention)
# Modules whose [N, C, L] output has its features (channels) second; any other module's three-dimensional
# output is a sequence [N, T, D] (a transformer, a batch-first RNN) with its features last.
CHANNELS_FIRST_1D = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.GroupNorm,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
)


def _features_last(module: nn.Module, value: Any) -> bool:
    """Whether ``module``'s output ``value`` holds its features along the last dimension: always for the
    LAST_DIM modules; for a three-dimensional output, unless the module (or the last of its leaf modules,
    for a container) is a one-dimensional convolution, norm or pooling; never for images ([N, C, H, W])."""
    if isinstance(module, LAST_DIM):
        return True
    t = value if isinstance(value, torch.Tensor) else first_float_tensor(value)
    if t is None or t.ndim != 3:
        return False
    leaves = [m for m in module.modules() if not any(m.children())]
    return not isinstance(leaves[-1] if leaves else module, CHANNELS_FIRST_1D)


class EmbeddingCallback(VizCallback):
    """What the model's features separate: the feature vectors a layer gives a fixed sample of examples,
    every N epochs, on their first two principal components (a scatter coloured by label, wrong predictions
    as crosses) and in TensorBoard's Projector dashboard (with the labels, the predictions and, for image
    inputs, a sprite of the examples), so that PCA, t-SNE and UMAP can be run on them there.

    By default the features are the *input* of the model's last ``nn.Linear`` (the penultimate features a
    classifier head reads); a model without Linear layers gives its last convolution's output. ``layer``
    names another module (a clean module name as ``ModelSummaryCallback`` shows it): its *output* is taken.
    Features with more than two dimensions become one row per example: a convolution's ``[N, C, H, W]``
    averaged over positions (``pool: mean``, ``[N, C]``) or flattened (``pool: flatten``); any other
    ``[N, T, D]`` (a Linear's, a transformer's; not a 1-D convolution's ``[N, C, L]``) averaged over its
    tokens, a nested tensor over each example's own tokens. The forward pass runs in eval mode without
    gradients, in chunks of 64 examples, outside ``torch.compile`` so hooks fire; on every rank (sharded
    models need all of them), rank 0's features are drawn. Labels are the batch's target (second element or ``y``/``label``/...
    key), predictions the model's output, as ``PredictionGridCallback`` reads them. Figures are
    ``embedding_stepNNNNNN.png`` with a ``.json`` of the data and the features in
    ``embedding_features_stepNNNNNN.npz``; the Projector's files go beside TensorBoard's event files.

    Args:
        every_n_epochs: capture at the end of every N-th training epoch.
        layer: the module whose output is the features (default: the input of the last ``nn.Linear``).
        pool: ``"mean"`` (average over positions) or ``"flatten"`` for features with more than two dimensions.
        sample_size: examples in the fixed sample (default: 256, or the whole dataset when it is smaller).
        sample_from: ``"val"`` (the first validation dataloader; the training data when there is none) or
            ``"train"``.
        class_names: names of the classes, by index (default: the indices).
        projector: write TensorBoard Projector files when a ``TensorBoardLogger`` is configured.
        max_image_px: sprite images are shrunk to at most this many pixels a side.
        output_dir: where files go; default ``<trainer.log_dir>/viz/embedding``.
        when_full: when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name: ClassVar[str] = "embedding"
    captures: ClassVar[str] = "embeddings"
    section_title, report_rank = "Embeddings", 3
    figures: ClassVar[tuple[FigureSpec, ...]] = (
        FigureSpec(
            "embedding",
            "The fixed sample's features on their first two principal components",
            "lightning_viz.render.embedding:render_embedding",
            "embedding_step*.json",
        ),
    )

    def __init__(
        self,
        every_n_epochs: int = 1,
        layer: str | None = None,
        pool: Literal["mean", "flatten"] = "mean",
        sample_size: int | None = None,
        sample_from: Literal["val", "train"] = "val",
        class_names: list[str] | None = None,
        projector: bool = True,
        max_image_px: int = 28,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_int("every_n_epochs", every_n_epochs, 1)
        check_int("sample_size", sample_size, 2, optional=True)
        check_choice("pool", pool, POOLS)
        check_choice("sample_from", sample_from, ("val", "train"))
        check_int("max_image_px", max_image_px, 2)
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ValueError(f"`layer` must be a module name such as 'backbone.fc'; got {layer!r}")
        if not isinstance(projector, bool):
            raise ValueError(f"`projector` must be true or false; got {projector!r}")
        self.every_n_epochs = every_n_epochs
        self.layer = layer
        self.pool: Pool = pool
        self.sample_size = sample_size
        self.sample_from = sample_from
        self.class_names = check_names("class_names", class_names)
        self.projector = projector
        self.max_image_px = max_image_px
        self.schedule = Schedule(None, every_n_epochs)
        self._sample = FixedSample(type(self).__name__, sample_from, sample_size, DEFAULT_SAMPLE)
        self.layer_name: str | None = None  # the resolved layer
        self.source: Literal["input", "output"] = "output"
        self._module: nn.Module | None = None
        self._resolved = False

    def state_fields(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "layer": self.layer, "pool": self.pool}

    # ------------------------------------------------------------------ setup
    def check_model(self, pl_module: LightningModule) -> None:
        if self.layer is not None and not is_overridden("configure_model", pl_module):
            one_layer(named_layers(pl_module), self.layer, argument="layer")

    def check_setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._resolved, self.layer_name = False, None
        if not is_overridden("configure_model", pl_module):  # else its layers exist from on_fit_start on
            self._resolve(pl_module)
        self._sample.setup(trainer)

    def _resolve(self, model: nn.Module) -> None:
        self._resolved = True
        named = named_layers(model)
        if self.layer is not None:
            self.layer_name, self.source = one_layer(named, self.layer, argument="layer"), "output"
            return
        convs, linears = default_layers(named)
        if linears:
            self.layer_name, self.source = linears[-1], "input"
        elif convs:
            self.layer_name, self.source = convs[-1], "output"
            rank_zero_info(
                f"EmbeddingCallback: the model has no Linear layer; the features are the output of its last "
                f"convolution {convs[-1]!r}. Set `layer` to choose another module."
            )
        else:
            rank_zero_warn(
                "EmbeddingCallback: the model has no Linear or convolution layer, so no embedding is drawn. "
                "Set `layer` to the module whose output is the features.",
                category=VizWarning,
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Strategies may replace modules after setup (SyncBatchNorm) or create them (configure_model).
        if not self._resolved:
            self._resolve(pl_module)
        self._module = named_layers(pl_module).get(self.layer_name) if self.layer_name else None

    # ------------------------------------------------------------------ the fixed sample's features
    def _forward(
        self, trainer: Trainer, pl_module: LightningModule, inp: ModelInput
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, bool]:
        """The layer's features and the model's predictions for ``inp``, chunk by chunk, and whether the
        features were averaged over positions."""
        assert self._module is not None
        seen: list[Any] = []
        pooled: list[bool] = []
        module = self._module

        def keep(value: Any) -> None:
            if not seen:  # the first call of a module the forward calls more than once
                last = self.source == "input" or _features_last(module, value)
                seen.append(features_of(value, self.pool, channels_last=last))
                raw = value if isinstance(value, torch.Tensor) else first_float_tensor(value)
                pooled.append(raw is not None and raw.ndim > 2 and self.pool == "mean")

        if self.source == "input":
            handle = self._module.register_forward_pre_hook(lambda m, args: keep(args))
        else:
            handle = self._module.register_forward_hook(lambda m, args, out: keep(out))
        size = inp.batch_size() or 1
        feats: list[torch.Tensor | None] = []
        preds: list[torch.Tensor | None] = []
        try:
            with inference(trainer, pl_module):
                for start in range(0, size, CHUNK):
                    part = inp.apply(
                        lambda t, s=start: t[s : s + CHUNK] if t.ndim > 0 and t.shape[0] == size else t
                    )
                    part = on_model(trainer, pl_module, part)
                    seen.clear()
                    out = part(pl_module)
                    feats.append(seen[0] if seen else None)
                    p = targets.prediction_of(out)
                    preds.append(p.detach().float().cpu() if p is not None else None)
        finally:
            handle.remove()
        f = torch.cat(feats).cpu() if feats and all(t is not None for t in feats) else None  # type: ignore[misc]
        p = torch.cat(preds) if preds and all(t is not None for t in preds) else None  # type: ignore[misc]
        return f, p, bool(pooled) and pooled[0]

    @staticmethod
    def _labels(
        p: torch.Tensor | None, y: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
        """(labels, predicted classes or None, "class" | "value") of target ``y`` and prediction ``p``."""
        task = targets.detect_task(p, y) if p is not None else None
        if task in ("classification", "binary"):
            judged = targets.judge(task, p, y)  # type: ignore[arg-type]
            return judged.true.float(), judged.pred.float(), "class"
        if task == "regression" or (y.is_floating_point() and y.ndim >= 1):
            return y.float().reshape(len(y), -1)[:, 0], None, "value"
        if y.ndim == 1:  # integer targets the output does not match: labels without predictions
            return y.float(), None, "class"
        return None, None, ""

    # ------------------------------------------------------------------ capture (every rank)
    def capture_epoch(self, trainer: Trainer, pl_module: LightningModule) -> Sums | None:
        if self._module is None:  # the same on every rank
            return None
        step = trainer.global_step
        values: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"step": step, "epoch": trainer.current_epoch, "label_kind": None}
        failed = False
        try:
            pair = self._sample.get(pl_module)
            if pair is not None:
                inp, y = pair
                f, p, pooled = self._forward(trainer, pl_module, inp)
                n = inp.batch_size()
                if f is None or len(f) != n:
                    warn_once(
                        (type(self).__name__, "features"),
                        f"EmbeddingCallback: the {self.source} of {self.layer_name!r} gives no "
                        f"[examples, ...] float tensor for the {n} examples of the sample"
                        + (f" (it gives {tuple(f.shape)})" if f is not None else "")
                        + "; no embedding is drawn. Set `layer` to another module.",
                    )
                else:
                    values["features"] = f
                    meta["dims"], meta["pooled"] = int(f.shape[1]), pooled
                    if y is not None and len(y) == n:
                        labels, predicted, kind = self._labels(p, y)
                        if labels is not None:
                            values["labels"], meta["label_kind"] = labels, kind
                        if predicted is not None:
                            values["predicted"] = predicted
                    images = shrunk_images(inp.primary(), self.max_image_px) if not inp.is_example else None
                    if images is not None and len(images) == n:
                        values["images"] = images.cpu()
        except Exception as err:  # every rank still takes part in the collectives
            failed = True
            warn_once(
                (type(self).__name__, "capture", type(err).__name__),
                f"EmbeddingCallback: the fixed sample's forward pass failed at step {step}: {short_error(err)}. "
                "Training continues; this warning is shown once.",
            )
            values = {}
        return Sums(step, values, dict.fromkeys(values, "rank0"), failed=failed, meta=meta)

    # ------------------------------------------------------------------ render (rank 0)
    def _class_name(self, i: float) -> str:
        k = int(i)
        return self.class_names[k] if self.class_names and 0 <= k < len(self.class_names) else str(k)

    def render(self, trainer: Trainer, reduced: Reduced) -> None:
        meta, values = reduced.meta, reduced.values
        feats = values.get("features")
        if feats is None:
            return
        step = meta["step"]
        proj = pca_2d(feats)
        kept = torch.as_tensor(proj.kept)
        labels, predicted = values.get("labels"), values.get("predicted")
        data: dict[str, Any] = {
            "step": step,
            "epoch": meta["epoch"],
            "layer": self.layer_name,
            "source": self.source,
            "pooled": bool(meta.get("pooled")),
            "dims": meta["dims"],
            "n": len(feats),
            "coords": proj.coords.tolist(),
            "explained": proj.explained.tolist(),
            "left_out": int((~kept).sum()),
            "labels": labels[kept].tolist() if labels is not None else None,
            "label_kind": meta["label_kind"],
            "predicted": predicted[kept].tolist() if predicted is not None else None,
            "class_names": self.class_names,
        }
        self.emit_figure(
            trainer,
            render_embedding,
            data,
            tag=f"viz/{self.viz_name}/embedding",
            stem=step_stem("embedding", step),
            step=step,
        )
        arrays = {"features": feats.numpy()} | ({"labels": labels.numpy()} if labels is not None else {})
        self.emit_data(trainer, step_stem("embedding_features", step), arrays)
        if self.projector and self.emitting(trainer):
            self._to_projector(
                step, feats[kept].numpy(), labels, predicted, values.get("images"), kept, meta["label_kind"]
            )

    def _to_projector(
        self,
        step: int,
        features: np.ndarray,
        labels: torch.Tensor | None,
        predicted: torch.Tensor | None,
        images: torch.Tensor | None,
        kept: torch.Tensor,
        kind: str | None,
    ) -> None:
        metadata: dict[str, list[str]] = {}
        if labels is not None:
            if kind == "class":
                metadata["label"] = [self._class_name(v) for v in labels[kept].tolist()]
            else:
                metadata["target"] = [f"{v:.6g}" for v in labels[kept].tolist()]
        if predicted is not None:
            metadata["predicted"] = [self._class_name(v) for v in predicted[kept].tolist()]
        sprite = None
        if images is not None:
            x = images[kept].double()
            lo = x.flatten(1).amin(1)[:, None, None, None]
            hi = x.flatten(1).amax(1)[:, None, None, None]
            sprite = ((x - lo) / (hi - lo).clamp_min(1e-12)).numpy()  # each image on its own range
        sinks, owner, tag = list(self._sinks), type(self).__name__, f"viz/{self.viz_name}/{self.layer_name}"
        self._submit(
            f"projector step {step}",
            lambda: fan_out(sinks, "embedding", tag, features, metadata or None, sprite, step, owner=owner),
        )
