"""Models written the way users write them, for tests/users/test_setups.py (one Trainer setting each).

Tiny tensors and 4 batches of 16 per epoch, so that each fit takes a few seconds on a CPU; every dataloader
has ``num_workers=0``. Each model logs ``train_loss`` at step level (what TrainingHealthCallback monitors by
default) and is healthy, except where a pathology is planted on purpose.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tests.helpers import RandomImages, TinyCNN

VOCAB, SEQ_LEN, N_CLASSES = 20, 12, 3


def loader(*tensors: torch.Tensor, dataset: Dataset | None = None) -> DataLoader:
    return DataLoader(dataset or TensorDataset(*tensors), batch_size=16, shuffle=False, num_workers=0)


class DictDataset(Dataset):
    """Examples as dicts of tensors (collated into dict batches)."""

    def __init__(self, **columns: torch.Tensor) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


class Steps(LightningModule):
    """The steps most users write around ``self.loss(batch)``; SGD over the parameters that train."""

    lr = 0.05

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr)


# ---------------------------------------------------------------------- images
class ImagesAllStages(RandomImages):
    """RandomImages with test and predict dataloaders as well."""

    def test_dataloader(self):
        return loader(self.x[32:], self.y[32:])

    def predict_dataloader(self):
        return loader(self.x[:16])


class TwoValLoaders(RandomImages):
    def val_dataloader(self):
        return [loader(self.x[:16], self.y[:16]), loader(self.x[16:32], self.y[16:32])]


class EvalCNN(TinyCNN):
    """TinyCNN with the steps a user adds for ``trainer.test`` and ``trainer.predict``."""

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0]).argmax(1)


class TwoValLoaderCNN(TinyCNN):
    """Two validation dataloaders: Lightning logs ``val_loss/dataloader_idx_0`` and ``..._1``."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


class PlantedDeadCNN(Steps):
    """Two conv layers, each followed by a ReLU; ``conv2``'s is dead by construction (bias -100).

    ``functional_dead``: ``conv2`` is followed by ``F.relu`` in ``forward`` and the healthy ``conv1`` by an
    ``nn.ReLU`` module (``act1``); otherwise the other way round (``F.relu`` after ``conv1``, ``act2`` after
    ``conv2``). ``conv1``'s bias is +0.3, so about 30% of its values are zero after the ReLU (none before):
    its dead fraction tells where it was measured.
    """

    def __init__(self, functional_dead: bool = True) -> None:
        super().__init__()
        self.functional_dead = functional_dead
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        setattr(self, "act1" if functional_dead else "act2", nn.ReLU())
        self.fc = nn.Linear(24, 4)
        with torch.no_grad():
            self.conv1.bias.fill_(0.3)
            self.conv2.bias.fill_(-100.0)
        self.example_input_array = torch.zeros(2, 1, 8, 8)

    def forward(self, x):
        if self.functional_dead:
            x = F.relu(self.conv2(self.act1(self.conv1(x))))
        else:
            x = self.act2(self.conv2(F.relu(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


class TrainOnlyCNN(LightningModule):
    """No validation step and no validation dataloader; the model brings its own training dataloader."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x):
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def train_dataloader(self):
        data = RandomImages()
        return loader(data.x, data.y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class FinetuneCNN(Steps):
    """A ``backbone`` (frozen, then unfrozen by ``BackboneFinetuning``) and a ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 4))
        self.example_input_array = torch.zeros(2, 1, 8, 8)

    def forward(self, x):
        return self.head(self.backbone(x))


class GAN(LightningModule):
    """Manual optimization with two optimizers, the generator's step first, then the discriminator's.

    ``forward`` scores images with the discriminator (what the summary and the activation maps see).
    """

    def __init__(self, latent: int = 8) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.latent = latent
        self.generator = nn.Sequential(
            nn.Linear(latent, 32), nn.ReLU(), nn.Linear(32, 64), nn.Tanh(), nn.Unflatten(1, (1, 8, 8))
        )
        self.discriminator = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(64, 1)
        )
        self.example_input_array = torch.zeros(2, 1, 8, 8)

    def forward(self, x):
        return self.discriminator(x)

    def _step(self, opt, loss_fn) -> torch.Tensor:
        self.toggle_optimizer(opt)
        loss = loss_fn()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.untoggle_optimizer(opt)
        return loss

    def training_step(self, batch, batch_idx):
        real = batch[0]
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], self.latent)
        ones, zeros = real.new_ones(real.shape[0], 1), real.new_zeros(real.shape[0], 1)
        bce = F.binary_cross_entropy_with_logits
        g_loss = self._step(opt_g, lambda: bce(self(self.generator(z)), ones))
        fake = self.generator(z).detach()
        d_loss = self._step(opt_d, lambda: (bce(self(real), ones) + bce(self(fake), zeros)) / 2)
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss, "train_loss": g_loss + d_loss})

    def configure_optimizers(self):
        return (
            torch.optim.Adam(self.generator.parameters(), lr=1e-3),
            torch.optim.Adam(self.discriminator.parameters(), lr=1e-3),
        )


# ---------------------------------------------------------------------- signals and sequences
class Signals(LightningDataModule):
    """1-channel signals of length 16 and a real target (3 x their mean, plus noise)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 1, 16, generator=g)
        self.y = 3 * self.x.mean(dim=(1, 2)) + 0.1 * torch.randn(64, generator=g)

    def train_dataloader(self):
        return loader(self.x, self.y)

    def val_dataloader(self):
        return loader(self.x[:32], self.y[:32])


class Regressor(Steps):
    """A Conv1d regressor logging ``val_mae``: a metric that no default panel pattern names."""

    lr = 0.02

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(64, 1)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1)).squeeze(1)

    def loss(self, batch):
        return F.mse_loss(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))
        self.log("val_mae", (self(x) - y).abs().mean())


def tokens(n: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids ``[n, SEQ_LEN]`` (0 = padding at the tails), their attention mask and labels."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (n,), generator=g)
    mask = (torch.arange(SEQ_LEN)[None] < lengths[:, None]).long()
    ids = torch.randint(1, VOCAB, (n, SEQ_LEN), generator=g) * mask
    return ids, mask, ids[:, 0] % N_CLASSES


class Tokens(LightningDataModule):
    """Token sequences as ``(ids, labels)`` tuples, or (``as_dict``) as dict batches keyed like a tokenizer's
    output: ``input_ids``, ``attention_mask``, ``labels``."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.ids, self.mask, self.labels = tokens()
        self.as_dict = as_dict

    def _loader(self, n: int) -> DataLoader:
        if self.as_dict:
            data = DictDataset(input_ids=self.ids[:n], attention_mask=self.mask[:n], labels=self.labels[:n])
            return loader(dataset=data)
        return loader(self.ids[:n], self.labels[:n])

    def train_dataloader(self):
        return self._loader(64)

    def val_dataloader(self):
        return self._loader(32)


class AttentionClassifier(Steps):
    """Embedding, ``nn.MultiheadAttention`` (which uses its ``out_proj`` Linear's weights functionally: that
    module is never called), a residual LayerNorm, mean over tokens, a Linear head."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.attn = nn.MultiheadAttention(dim, num_heads=2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, N_CLASSES)
        self.example_input_array = tokens(2)[0]

    def forward(self, ids):
        h = self.embed(ids)
        a, _ = self.attn(h, h, h, key_padding_mask=ids == 0, need_weights=False)
        return self.fc(self.norm(h + a).mean(dim=1))


class GRUClassifier(Steps):
    """A frozen (pretrained-style) embedding, a GRU, and a Linear head on the last hidden state."""

    def __init__(self, dim: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim).requires_grad_(False)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, N_CLASSES)
        self.example_input_array = tokens(2)[0]

    def forward(self, ids):
        return self.fc(self.gru(self.embed(ids))[1][-1])


# ---------------------------------------------------------------------- dict batches, keyword forwards
class MaskedImages(LightningDataModule):
    """Dict batches ``{"x", "mask", "y"}``: 1x8x8 images and a pixel mask."""

    def __init__(self) -> None:
        super().__init__()
        base, g = RandomImages(), torch.Generator().manual_seed(1)
        self.columns = {
            "x": base.x,
            "mask": (torch.rand(64, 1, 8, 8, generator=g) > 0.2).float(),
            "y": base.y,
        }

    def train_dataloader(self):
        return loader(dataset=DictDataset(**self.columns))

    def val_dataloader(self):
        return loader(dataset=DictDataset(**{k: v[:32] for k, v in self.columns.items()}))


class MaskedCNN(Steps):
    """``forward(self, x, *, mask=None)``, trained on dict batches; ``example_input_array`` is a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(16, 4)
        self.example_input_array = torch.zeros(2, 1, 8, 8)

    def forward(self, x, *, mask=None):
        x = x if mask is None else x * mask
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))

    def loss(self, batch):
        return F.cross_entropy(self(batch["x"], mask=batch["mask"]), batch["y"])


class TokenCNN(Steps):
    """``forward(self, input_ids, attention_mask)``, trained on dict batches keyed by its parameter names
    (plus ``labels``); ``example_input_array`` is a dict of keyword inputs."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)
        self.fc = nn.Linear(dim, N_CLASSES)
        ids, mask, _ = tokens(2)
        self.example_input_array = {"input_ids": ids, "attention_mask": mask}

    def forward(self, input_ids, attention_mask):
        h = F.relu(self.conv(self.embed(input_ids).transpose(1, 2)))  # [N, dim, T]
        m = attention_mask[:, None, :].to(h.dtype)
        return self.fc((h * m).sum(-1) / m.sum(-1).clamp(min=1))

    def loss(self, batch):
        return F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])


class LengthBatches(LightningDataModule):
    """Tuple batches ``(signals, lengths, y)``: 1-channel signals of 8 to 16 samples, zero-padded to 16."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.lengths = torch.randint(8, 17, (64,), generator=g)
        self.x = torch.randn(64, 1, 16, generator=g) * (torch.arange(16) < self.lengths[:, None])[:, None]
        self.y = torch.randint(0, N_CLASSES, (64,), generator=g)

    def train_dataloader(self):
        return loader(self.x, self.lengths, self.y)

    def val_dataloader(self):
        return loader(self.x[:32], self.lengths[:32], self.y[:32])


class LengthCNN(Steps):
    """``forward(self, x, lengths)``: two positional inputs; ``example_input_array`` is a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, N_CLASSES)
        self.example_input_array = (torch.zeros(2, 1, 16), torch.tensor([16, 9]))

    def forward(self, x, lengths):
        h = self.act(self.conv(x))
        keep = (torch.arange(x.shape[-1], device=x.device)[None] < lengths[:, None]).to(h.dtype)
        return self.fc((h * keep[:, None]).sum(-1) / lengths[:, None].to(h.dtype))

    def loss(self, batch):
        x, lengths, y = batch
        return F.cross_entropy(self(x, lengths), y)


# ---------------------------------------------------------------------- the ddp_spawn job
class SpawnProbe(Callback):
    """In each spawned process, records lightning-viz warnings from setup to teardown; rank 0 then writes
    ``result.json``: the warnings, hooks left on the model, open figures, histogram totals and numel."""

    def __init__(self, out: str) -> None:
        self.out = out
        self._catcher: warnings.catch_warnings | None = None
        self._caught: list = []

    def setup(self, trainer, pl_module, stage):
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def teardown(self, trainer, pl_module, stage):
        from lightning_viz import WeightHistogramCallback
        from lightning_viz.core import writer
        from lightning_viz.core.hooks import hook_count
        from lightning_viz.core.warn import VizWarning
        from lightning_viz.render import open_figure_count

        writer.flush()
        if self._catcher is not None:
            self._catcher.__exit__(None, None, None)
            self._catcher = None
        if trainer.global_rank != 0:
            return
        hist = next(cb for cb in trainer.callbacks if isinstance(cb, WeightHistogramCallback))
        totals = {}
        for sel, series in hist._history.items():
            for name, s in series.items():
                a = s.arrays()
                totals[f"{sel}/{name}"] = (a["counts"].sum(axis=1) + a["nonfinite"]).tolist()
        result = {
            "viz_warnings": [str(w.message) for w in self._caught if issubclass(w.category, VizWarning)],
            "hooks": hook_count(pl_module),
            "open_figures": open_figure_count(),
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "numel": {n: p.numel() for n, p in pl_module.named_parameters()},
            "totals": totals,
            "log_dir": trainer.logger.log_dir,  # not trainer.log_dir: a broadcast, on rank 0 alone here
        }
        Path(self.out, "result.json").write_text(json.dumps(result))
