"""SequenceTransformer: a small pre-norm transformer encoder whose attention probabilities are visible.

Each block's softmax output passes through an ``nn.Identity`` named ``attn_probs``, so a forward hook sees
the attention maps as a ``(batch, heads, query, key)`` tensor: ``ActivationMapCallback`` shows them as one
heatmap per head (``layers: ["blocks.*.attn_probs"]``), and the blocks' ``(batch, tokens, features)``
outputs as heatmaps of their own.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix


class AttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention and MLP, with the attention probabilities exposed."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_probs = nn.Identity()  # hook point: (batch, heads, query, key)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        probs = self.attn_probs(torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1))
        x = x + self.proj((probs @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class SequenceTransformer(LightningModule):
    """Classify a token sequence from a learned ``[CLS]`` token that attends to the others.

    Args:
        vocab: vocabulary size of the data (``SequenceDataModule.vocab``).
        length: tokens per sequence (the model adds one ``[CLS]`` position).
        dim: width of the token embeddings (divisible by ``heads``).
        heads: attention heads per block.
        depth: number of blocks.
        lr: AdamW learning rate.
    """

    def __init__(
        self,
        vocab: int = 10,
        length: int = 16,
        dim: int = 32,
        heads: int = 4,
        depth: int = 2,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"`dim` ({dim}) must be divisible by `heads` ({heads})")
        self.save_hyperparameters()
        self.num_classes = vocab - 2
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, length + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[AttentionBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.num_classes)
        self.train_acc = MulticlassAccuracy(num_classes=self.num_classes)
        self.val_acc = MulticlassAccuracy(num_classes=self.num_classes)
        self.val_confmat = MulticlassConfusionMatrix(num_classes=self.num_classes, normalize="true")
        self.example_input_array = torch.full((2, length), 2, dtype=torch.long)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits ``(batch, vocab - 2)`` for tokens ``(batch, length)``; position 0 is ``[CLS]``."""
        cls = torch.zeros_like(tokens[:, :1])  # token 0 is reserved for [CLS]
        x = self.embed(torch.cat([cls, tokens], dim=1)) + self.pos[:, : tokens.shape[1] + 1]
        return self.head(self.norm(self.blocks(x))[:, 0])

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        tokens, labels = batch
        logits = self(tokens)
        loss = nn.functional.cross_entropy(logits, labels)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, labels)
        self.log(
            f"{stage}_loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, sync_dist=True
        )
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        if stage == "val":
            self.val_confmat.update(logits, labels)  # drawn by MetricPlotCallback at epoch end
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)
