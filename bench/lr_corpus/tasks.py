"""The LR corpus: small training tasks on scikit-learn's bundled datasets (no download), one entry per task in TASKS.

Each task is what probe.py is given: a model (TARGET), its real batches (`--data`), the part of a batch the model
takes (`--batch-inputs`), a loss (`--loss`, two parameters: output and batch) and an optimizer. `truth.py` trains
each task from the same initial weights on the same batches at a grid of learning rates and writes `truth.json`
(the best LR and the LR where training breaks); `bench/lr_bench.py` scores probe.py and the other LR finders
against it. Adding a case is one entry in TASKS (and a rerun of truth.py).

Data: features standardised (mean 0, std 1 per column, digits scaled to [0, 1]), rows shuffled with a fixed seed,
cut into batches of BATCH rows (the last partial batch dropped).
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = "bench/lr_corpus/tasks.py"
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))


# ---- data: scikit-learn's bundled datasets ---------------------------------------------------------------------

@functools.cache
def _dataset(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    import sklearn.datasets
    x, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    if name == "digits":
        x = x / 16.0  # pixel intensities 0..16
    else:
        x = (x - x.mean(0)) / x.std(0).clamp(min=1e-8)
    if name == "diabetes":
        y = torch.tensor(y, dtype=torch.float32)
        y = ((y - y.mean()) / y.std()).unsqueeze(1)  # (N, 1) standardised disease progression
    else:
        y = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


def _batches(name: str, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _dataset(name)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x) - batch + 1, batch)]


def digits_batches():
    return _batches("digits", 64)  # 28 batches


def iris_batches():
    return _batches("iris", 16)  # 9 batches


def wine_batches():
    return _batches("wine", 16)  # 11 batches


def breast_cancer_batches():
    return _batches("breast_cancer", 32)  # 17 batches


def diabetes_batches():
    return _batches("diabetes", 32)  # 13 batches


def digits_rows_batches():
    """Digits as sequences: 8 rows of 8 pixels."""
    return [(x.reshape(-1, 8, 8), y) for x, y in digits_batches()]


def digits_image_batches():
    return [(x.reshape(-1, 1, 8, 8), y) for x, y in digits_batches()]


SET_SIZE, SET_COUNT = 12, 16  # a "dataset" of the ranking task: up to 12 digit images; 16 datasets per batch


def digits_sets_batches():
    """The SimilarityTransformer's task on real images: each dataset is a padded set of 6..12 digit images drawn
    from 2 classes; the candidates are the 10 classes (a fixed random 16-d embedding each); a class is more relevant
    the more of the set's images belong to it."""
    x, y = _dataset("digits")
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(10, 16, generator=generator)  # (M=10, 16)
    batches = []
    for _ in range(12):
        images = torch.zeros(SET_COUNT, SET_SIZE, 64)
        mask = torch.ones(SET_COUNT, SET_SIZE, dtype=torch.bool)
        relevance = torch.zeros(SET_COUNT, 10)
        for b in range(SET_COUNT):
            classes = torch.randperm(10, generator=generator)[:2]
            size = int(torch.randint(6, SET_SIZE + 1, (1,), generator=generator))
            pool = torch.nonzero((y == classes[0]) | (y == classes[1])).squeeze(1)
            chosen = pool[torch.randperm(len(pool), generator=generator)[:size]]
            images[b, :size], mask[b, :size] = x[chosen], False
            relevance[b] = torch.bincount(y[chosen], minlength=10).float()
        batches.append({"dataset_embeddings": images, "padding_mask": mask, "model_embeddings": embeddings,
                        "relevance": relevance})
    return batches


# ---- batch -> model inputs, losses ------------------------------------------------------------------------------

def pick_x(batch):
    return batch[0]


def pick_set(batch):
    return {key: batch[key] for key in ("dataset_embeddings", "padding_mask", "model_embeddings")}


def cross_entropy(output, batch):
    return F.cross_entropy(output, batch[1])


def cross_entropy_smoothed(output, batch):
    """Label smoothing 0.1: the loss stays above 0 where the data are separable (wine), so a loss ratio means something."""
    return F.cross_entropy(output, batch[1], label_smoothing=0.1)


def mse(output, batch):
    return F.mse_loss(output, batch[1])


def autoencoder_loss(output, batch):
    return output["loss"]


def ranking(output, batch):
    """The bundled RankingLoss at margin 1 (its 0.1 is met within a few steps, leaving a loss near 0 whose ratio
    between two LRs means nothing)."""
    from ranking_loss import RankingLoss
    return RankingLoss(margin=1.0)(output, batch["relevance"])


# ---- models ------------------------------------------------------------------------------------------------------

class Linear(nn.Module):
    """Softmax / logistic / linear regression."""

    def __init__(self, inputs: int = 64, outputs: int = 10):
        super().__init__()
        self.linear = nn.Linear(inputs, outputs)

    def forward(self, x):
        return self.linear(x)


class MLP(nn.Module):
    def __init__(self, inputs: int = 64, hidden: int = 64, outputs: int = 10, depth: int = 2):
        super().__init__()
        layers, width = [], inputs
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, outputs))

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):  # (B, 1, 8, 8)
        return self.head(self.features(x).flatten(1))


class GRUClassifier(nn.Module):
    """A sequence classifier: a GRU over the rows, the last hidden state to the classes."""

    def __init__(self, features: int = 8, hidden: int = 32, classes: int = 10):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):  # (B, T, F)
        _, last = self.gru(x)  # (1, B, H)
        return self.head(last[0])


class SequenceTransformer(nn.Module):
    """A sequence transformer classifier: pre-norm encoder over the rows, mean-pooled."""

    def __init__(self, features: int = 8, d_model: int = 32, heads: int = 4, layers: int = 2, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        self.position = nn.Parameter(torch.randn(8, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, 0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):  # (B, T, F)
        return self.head(self.encoder(self.embed(x) + self.position).mean(1))


# ---- the corpus: one entry per task -------------------------------------------------------------------------------

def _task(name, target, data, loss, optimizer, kwargs=None, pick="pick_x", source=""):
    return {"name": name, "target": target if ":" in target else f"{HERE}:{target}", "kwargs": kwargs or {},
            "data": f"{HERE}:{data}", "batch_inputs": f"{HERE}:{pick}", "loss": f"{HERE}:{loss}",
            "optimizer": optimizer, "source": source}


TASKS = [
    _task("digits softmax regression", "Linear", "digits_batches", "cross_entropy", "sgd",
          source="sklearn load_digits, 64 -> 10 linear"),
    _task("digits MLP", "MLP", "digits_batches", "cross_entropy", "adamw", source="sklearn load_digits, 64-64-10"),
    _task("digits MLP momentum", "MLP", "digits_batches", "cross_entropy", "sgd-momentum",
          source="sklearn load_digits, 64-64-10"),
    _task("digits deep MLP", "MLP", "digits_batches", "cross_entropy", "sgd", {"depth": 4},
          source="sklearn load_digits, 64-64-64-64-10"),
    _task("digits CNN", "SmallCNN", "digits_image_batches", "cross_entropy", "adam",
          source="sklearn load_digits as 1x8x8 images"),
    _task("digits GRU", "GRUClassifier", "digits_rows_batches", "cross_entropy", "adam",
          source="sklearn load_digits as 8 rows of 8 pixels"),
    _task("digits sequence transformer", "SequenceTransformer", "digits_rows_batches", "cross_entropy", "adamw",
          source="sklearn load_digits as 8 rows of 8 pixels"),
    _task("iris MLP", "MLP", "iris_batches", "cross_entropy", "sgd", {"inputs": 4, "hidden": 16, "outputs": 3},
          source="sklearn load_iris"),
    _task("wine MLP", "MLP", "wine_batches", "cross_entropy_smoothed", "adam", {"inputs": 13, "hidden": 32, "outputs": 3},
          source="sklearn load_wine"),
    _task("breast-cancer logistic regression", "Linear", "breast_cancer_batches", "cross_entropy", "sgd-momentum",
          {"inputs": 30, "outputs": 2}, source="sklearn load_breast_cancer"),
    _task("diabetes MLP", "MLP", "diabetes_batches", "mse", "adamw", {"inputs": 10, "hidden": 32, "outputs": 1},
          source="sklearn load_diabetes, standardised target"),
    _task("diabetes linear regression", "Linear", "diabetes_batches", "mse", "sgd", {"inputs": 10, "outputs": 1},
          source="sklearn load_diabetes, standardised target"),
    _task("digits autoencoder (bundled)", "examples/autoencoder.py:ModelAutoEncoder", "digits_batches",
          "autoencoder_loss", "adamw",
          {"input_dim": 64, "hidden_dims": [32], "embedding_dim": 8, "dropout": 0.0, "l1_weight": 1e-4},
          source="examples/autoencoder.py on sklearn load_digits"),
    _task("digit-set ranking (bundled SimilarityTransformer)", "examples/similarity_transformer.py:SimilarityTransformer",
          "digits_sets_batches", "ranking", "adamw",
          {"model_embedding_dim": 16, "dataset_embedding_dim": 64, "d_model": 32, "num_heads": 4, "num_layers": 2,
           "dim_feedforward": 64, "dropout": 0.0},
          pick="pick_set", source="examples/similarity_transformer.py + ranking_loss.py on sets of load_digits images"),
]


def probe_argv(task: dict) -> list[str]:
    """probe.py's command line for TASK (without output options)."""
    import json
    argv = [task["target"], "--data", task["data"], "--batch-inputs", task["batch_inputs"], "--loss", task["loss"],
            "--optimizer", task["optimizer"]]
    return argv + (["--kwargs", json.dumps(task["kwargs"])] if task["kwargs"] else [])


def batch_count(task: dict) -> int:
    return len(globals()[task["data"].split(":")[1]]())


def grid(count: int = 24, low: float = 1e-5, high: float = 1e2) -> list[float]:
    """COUNT learning rates evenly spaced in log10 from LOW to HIGH."""
    return [low * (high / low) ** (i / (count - 1)) for i in range(count)]


assert math.isclose(grid()[-1], 1e2)
