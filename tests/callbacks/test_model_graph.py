"""ModelGraphCallback (#18 item 1) in real Trainers: the drawn graph names each module and the shapes the
test computes itself, on a meta copy that leaves the model as it was; TensorBoard's Graphs dashboard, read
back with tensorboard's reader, holds one convolution op per Conv2d; a dict batch fed by keyword; a model
that cannot be traced is one warning and is still drawn; one that cannot run on meta runs itself; layers
made in configure_model and a compiled submodule; without Graphviz one line says what is skipped."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_viz.callbacks.model_graph import ModelGraphCallback
from lightning_viz.core.hooks import hook_count
from lightning_viz.core.warn import VizWarning
from tests.helpers import make_trainer, read_events

pytest.importorskip("torchview")
needs_dot = pytest.mark.skipif(
    __import__("shutil").which("dot") is None,
    reason="Graphviz's dot is not installed (apt-get install graphviz)",
)


def viz_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, VizWarning)]


class Net(LightningModule):
    """Two convolutions, a frozen BatchNorm kept in eval mode, a Linear head."""

    def __init__(self, example: bool = True, compiled: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(64, 3)
        if compiled:
            self.conv2 = torch.compile(self.conv2, backend="eager")
        self.bn.requires_grad_(False)
        if example:
            self.example_input_array = torch.zeros(2, 1, 8, 8)

    def on_fit_start(self) -> None:
        self.bn.eval()  # frozen statistics: must stay in eval mode

    def forward(self, x):
        return self.head(F.relu(self.conv2(F.relu(self.bn(self.conv1(x))))).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,))), 4)


def viz(trainer) -> Path:
    return Path(trainer.log_dir) / "viz" / "model_graph"


def ops(trainer) -> list[str]:
    return [n.op for n in read_events(trainer.logger.log_dir).Graph().node]


@needs_dot
def test_the_drawn_graph_names_each_module_with_its_shapes_and_leaves_the_model_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = hook_count(model)
    trainer = make_trainer(tmp_path, [ModelGraphCallback()], max_epochs=1, limit_train_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert viz_warnings(caught) == []
    data = json.loads((viz(trainer) / "model_graph.json").read_text())
    assert data["meta"] is True and data["model"] == "Net" and data["modules"] == 4
    svg = (viz(trainer) / "model_graph.svg").read_text()
    x = torch.zeros(2, 1, 8, 8)
    with torch.no_grad():
        shapes = {
            "conv1": model.conv1(x).shape,
            "bn": model.bn(model.conv1(x)).shape,
            "conv2": model.conv2(model.conv1(x)).shape,
            "head": (2, 3),
        }
    for name, cls in (("conv1", "Conv2d"), ("bn", "BatchNorm2d"), ("conv2", "Conv2d"), ("head", "Linear")):
        assert f">{name}</text>" in svg and f">{cls}</text>" in svg, name
        assert f"{tuple(shapes[name])}" in svg, (name, shapes[name])
    with Image.open(viz(trainer) / "model_graph.png") as im:
        assert im.size[1] > 400
    # the graph ran on a meta copy: the model's values, device, hooks and modes are as they were
    # (one training step changed the trainable weights; the frozen ones are bit for bit the same)
    after = model.state_dict()
    for k in ("bn.weight", "bn.bias"):
        assert torch.equal(after[k], before[k])
    assert all(v.device.type == "cpu" for v in after.values()) and hook_count(model) == hooks
    assert not model.bn.training
    # TensorBoard's Graphs dashboard: one convolution per Conv2d, one linear per Linear
    traced = ops(trainer)
    assert traced.count("aten::_convolution") == 2 and traced.count("aten::linear") == 1


class Keyword(LightningModule):
    """No convolutions, no example_input_array: dict batches fed by keyword (``forward(tokens, mask)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.mix = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, tokens, mask):
        h = torch.tanh(self.mix(self.embed(tokens))) * mask[..., None]
        return self.out(h.sum(1) / mask.sum(1, keepdim=True))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["tokens"], batch["mask"]), batch["label"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, 10, (8, 5), generator=g)
        rows = [{"tokens": tokens[i], "mask": torch.ones(5), "label": i % 2} for i in range(8)]
        return DataLoader(rows, batch_size=4)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(self.fc(x)) + x


class Long(LightningModule):
    """A chain of 24 residual blocks: long drawn left to right, nested when expanded."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block() for _ in range(24)])
        self.example_input_array = torch.zeros(2, 4)

    def forward(self, x):
        return self.blocks(x)

    def training_step(self, batch, batch_idx):
        return self(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)


@needs_dot
def test_a_long_graph_drawn_left_to_right_and_expanded_is_readable(tmp_path):
    """torchview bounds the drawing at 12 inches (1152 px at 96 dpi), which shrank a long chain drawn left to
    right to a strip a few pixels tall; the boxes ``expand_nested`` draws around a module's children are
    labelled in plain text, so their label must not hold the HTML line break of the node labels."""
    trainer = make_trainer(
        tmp_path,
        [ModelGraphCallback(depth=3, direction="LR", expand_nested=True, tensorboard=False)],
        max_epochs=1,
        limit_train_batches=1,
    )
    trainer.fit(Long())
    svg = (viz(trainer) / "model_graph.svg").read_text()
    assert "&lt;BR" not in svg and "<BR" not in svg
    for i in (0, 23):  # each block's box: "blocks.i: Block"; its leaves: "blocks.i.fc" over "Linear"
        assert f">blocks.{i}: Block</text>" in svg and f">blocks.{i}.fc</text>" in svg
    with Image.open(viz(trainer) / "model_graph.png") as im:
        width, height = im.size
    # 48 leaf nodes and 24 additions in a row, each at least 100 px wide at its natural size; a node's
    # two-line name and its input/output rows need at least 40 px of height
    assert width > 72 * 100 and height > 40, im.size
    # the report shows the picture and links the SVG beside it (a long graph is read zoomed in)
    from lightning_viz.report import build_report

    page = build_report(viz(trainer).parent)
    link = __import__("re").search(r'href="(model_graph/[^"]+\.svg)"', page.read_text())
    assert link and (page.parent / link[1]).read_text() == svg


@needs_dot
def test_a_huge_graph_is_bounded_in_pixels():
    """A drawing past 24000 px a side or 12 M pixels is scaled down by dot to fit, not drawn whole."""
    from lightning_viz.render.graph import DPI, MAX_PIXELS, MAX_SIDE_PX, bounded_size, dot_pipe

    small = "digraph g { a -> b }"
    assert bounded_size(small) is None
    chain = "digraph g { rankdir=LR; " + " -> ".join(f"n{i}" for i in range(600)) + " }"
    size = bounded_size(chain)
    assert size is not None
    w, h = (float(v) for v in size.split(","))
    assert max(w, h) * DPI <= MAX_SIDE_PX + 1 and w * h * DPI * DPI <= MAX_PIXELS * 1.01
    bounded = chain.replace("rankdir=LR;", f'rankdir=LR; size="{size}";')
    with Image.open(__import__("io").BytesIO(dot_pipe(bounded, "png"))) as im:
        assert max(im.size) <= MAX_SIDE_PX + 2, im.size


@needs_dot
def test_a_dict_batch_is_fed_by_keyword_from_the_first_training_batch(tmp_path):
    trainer = make_trainer(
        tmp_path, [ModelGraphCallback(direction="LR")], max_epochs=1, limit_train_batches=1
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Keyword())
    assert viz_warnings(caught) == []
    svg = (viz(trainer) / "model_graph.svg").read_text()
    assert ">embed</text>" in svg and ">mix</text>" in svg and "(2, 5, 6)" in svg  # two examples of the batch
    assert "rankdir=LR" in json.loads((viz(trainer) / "model_graph.json").read_text())["dot"]
    assert ops(trainer).count("aten::linear") == 2 and ops(trainer).count("aten::embedding") == 1


class Encoder(LightningModule):
    """A TransformerEncoder fed a dict batch by keyword (tokens and a padding mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens, mask):
        return self.head(self.encoder(self.embed(tokens), src_key_padding_mask=~mask).mean(1))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["tokens"], batch["mask"]), batch["label"])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        rows = [
            {
                "tokens": torch.randint(0, 20, (7,), generator=g),
                "mask": torch.ones(7, dtype=torch.bool),
                "label": i % 3,
            }
            for i in range(8)
        ]
        return DataLoader(rows, batch_size=4)


@needs_dot
def test_a_transformer_encoder_is_traced_for_the_graphs_dashboard_without_a_warning(tmp_path):
    """The trace runs without gradients, as the docs say: with them, a TransformerEncoder's trace differs
    from torch.jit.trace's check run ("Tracing failed sanity checks") and the Graphs dashboard was left out
    with a warning on a normal run."""
    trainer = make_trainer(tmp_path, [ModelGraphCallback()], max_epochs=1, limit_train_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Encoder())
    assert viz_warnings(caught) == []
    traced = ops(trainer)
    assert traced.count("aten::embedding") == 1 and traced, traced[:20]
    svg = (viz(trainer) / "model_graph.svg").read_text()
    for name in ("embed", "encoder.layers.0.self_attn", "encoder.layers.1.linear2", "head"):
        assert f">{name}</text>" in svg, name


@dataclass
class Output:
    logits: torch.Tensor


class Untraceable(Net):
    """Returns a dataclass (torch.jit.trace cannot) and reads a tensor's value (no meta kernel gives one)."""

    def forward(self, x):
        h = self.conv1(x)
        if h.abs().max().item() > 1e6:  # data-dependent: cannot run on meta
            h = h * 0
        return Output(super().forward(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x).logits, y)


@needs_dot
def test_a_model_that_cannot_be_traced_is_one_warning_and_is_still_drawn_on_itself(tmp_path):
    model = Untraceable()
    trainer = make_trainer(tmp_path, [ModelGraphCallback()], max_epochs=1, limit_train_batches=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert trainer.state.finished and trainer.global_step == 2
    msgs = viz_warnings(caught)
    assert len(msgs) == 1 and "torch.jit.trace cannot trace the model" in msgs[0], msgs
    assert "`tensorboard" in msgs[0] and "\n" not in msgs[0]
    data = json.loads((viz(trainer) / "model_graph.json").read_text())
    assert data["meta"] is False  # .item() has no meta value: the model ran itself, in eval mode
    assert ">conv2</text>" in (viz(trainer) / "model_graph.svg").read_text()
    assert not model.bn.training and hook_count(model) == 0


class Built(Net):
    """Layers made in configure_model (none exist at setup)."""

    def __init__(self) -> None:
        LightningModule.__init__(self)
        self.example_input_array = torch.zeros(2, 1, 8, 8)

    def configure_model(self) -> None:
        if not hasattr(self, "conv1"):
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 4, 3, stride=2, padding=1)
            self.head = nn.Linear(64, 3)


@needs_dot
@pytest.mark.parametrize("which", ["configure_model", "compiled"])
def test_layers_made_in_configure_model_and_a_compiled_submodule_are_drawn(tmp_path, which):
    model = Built() if which == "configure_model" else Net(compiled=True)
    trainer = make_trainer(tmp_path, [ModelGraphCallback()], max_epochs=1, limit_train_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert viz_warnings(caught) == []
    svg = (viz(trainer) / "model_graph.svg").read_text()
    assert ">conv1</text>" in svg and ">conv2</text>" in svg and ">head</text>" in svg
    assert ops(trainer).count("aten::_convolution") == 2


def test_without_graphviz_one_line_says_what_is_skipped_and_the_trace_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    trainer = make_trainer(tmp_path, [ModelGraphCallback()], max_epochs=1, limit_train_batches=1)
    log = logging.getLogger("lightning.pytorch")  # Lightning's console logger (does not propagate)
    log.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(Net())
    finally:
        log.removeHandler(caplog.handler)
    assert viz_warnings(caught) == []
    lines = [r.getMessage() for r in caplog.records if "ModelGraphCallback" in r.getMessage()]
    assert len(lines) == 1 and "`dot` is not on PATH" in lines[0] and "model_graph.png/.svg" in lines[0]
    assert not (viz(trainer) / "model_graph.png").exists()
    assert ops(trainer).count("aten::_convolution") == 2


@pytest.mark.parametrize(
    "kwargs,argument",
    [({"depth": 0}, "depth"), ({"direction": "BT"}, "direction"), ({"tensorboard": "yes"}, "tensorboard")],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`") as err:
        ModelGraphCallback(**kwargs)
    assert "\n" not in str(err.value)


class Generator(LightningModule):
    """A GAN's generator side: ``forward(z)`` takes noise of width 4, the batches are data of width 2."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, z):
        return self.gen(z)

    def training_step(self, batch, batch_idx):
        (real,) = batch
        return (self(torch.randn(len(real), 4)) - real).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)


@pytest.mark.parametrize("with_dot", [True, False], ids=["drawn", "no-dot"])
def test_a_batch_that_does_not_fit_forward_is_one_warning_that_names_example_input_array(
    tmp_path, monkeypatch, with_dot
):
    if with_dot and __import__("shutil").which("dot") is None:
        pytest.skip("Graphviz's dot is not installed")
    if not with_dot:
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    trainer = make_trainer(tmp_path, [ModelGraphCallback()], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Generator())
    assert trainer.state.finished
    msgs = viz_warnings(caught)
    assert len(msgs) == 1, msgs
    assert "cannot run the model on its input (batch[0]: (2, 2))" in msgs[0] and "mat1 and mat2" in msgs[0]
    assert "`self.example_input_array`" in msgs[0] and "\n" not in msgs[0]
    assert not (viz(trainer) / "model_graph.png").exists()
