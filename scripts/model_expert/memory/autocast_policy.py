"""What torch.autocast does to each function, asked of this torch's own autocast kernels, per device.

The estimate runs on meta tensors, which no autocast kernel sees, so the casts are emulated above
autograd (device_rules.TargetFunctionMode). Which functions run in the lower precision, which in
fp32 and which untouched differs between CUDA and CPU and between torch releases (CPU autocast runs
layer_norm in its input's dtype, CUDA in fp32). So the policy is not written down: each function is
called once on tiny tensors under real autocast (CPU tensors for "cpu"; FakeTensorMode "cuda"
tensors for "cuda", which dispatch through torch's AutocastCUDA kernels with no GPU present) and
classified by the dtype it returns. A function whose probe cannot run keeps FALLBACK's answer.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

LOWER, FP32, UNCHANGED = "lower", "fp32", "unchanged"

# name (as __torch_function__ sees it) -> a call on tensors from make(*shape) (the probe's dtype and device).
Make = Callable[..., torch.Tensor]
PROBES: dict[str, Callable[[Make], torch.Tensor]] = {
    "linear": lambda m: F.linear(m(2, 8), m(4, 8), m(4)),
    "matmul": lambda m: torch.matmul(m(2, 8), m(8, 4)),
    "__matmul__": lambda m: m(2, 8).__matmul__(m(8, 4)),
    "__rmatmul__": lambda m: m(8, 4).__rmatmul__(m(2, 8)),
    "mm": lambda m: torch.mm(m(2, 8), m(8, 4)),
    "bmm": lambda m: torch.bmm(m(2, 3, 8), m(2, 8, 4)),
    "baddbmm": lambda m: torch.baddbmm(m(2, 3, 4), m(2, 3, 8), m(2, 8, 4)),
    "addmm": lambda m: torch.addmm(m(2, 4), m(2, 8), m(8, 4)),
    "addbmm": lambda m: torch.addbmm(m(3, 4), m(2, 3, 8), m(2, 8, 4)),
    "addmv": lambda m: torch.addmv(m(2), m(2, 8), m(8)),
    "addr": lambda m: torch.addr(m(2, 4), m(2), m(4)),
    "mv": lambda m: torch.mv(m(2, 8), m(8)),
    "einsum": lambda m: torch.einsum("ij,jk->ik", m(2, 8), m(8, 4)),
    "chain_matmul": lambda m: torch.linalg.multi_dot([m(2, 8), m(8, 4), m(4, 3)]),
    "multi_dot": lambda m: torch.linalg.multi_dot([m(2, 8), m(8, 4), m(4, 3)]),
    "conv1d": lambda m: F.conv1d(m(1, 2, 8), m(4, 2, 3)),
    "conv2d": lambda m: F.conv2d(m(1, 2, 8, 8), m(4, 2, 3, 3)),
    "conv3d": lambda m: F.conv3d(m(1, 2, 4, 4, 4), m(4, 2, 3, 3, 3)),
    "conv_transpose1d": lambda m: F.conv_transpose1d(m(1, 2, 8), m(2, 4, 3)),
    "conv_transpose2d": lambda m: F.conv_transpose2d(m(1, 2, 8, 8), m(2, 4, 3, 3)),
    "conv_transpose3d": lambda m: F.conv_transpose3d(m(1, 2, 4, 4, 4), m(2, 4, 3, 3, 3)),
    "prelu": lambda m: F.prelu(m(2, 4), m(1)),
    "scaled_dot_product_attention": lambda m: F.scaled_dot_product_attention(m(1, 2, 4, 8), m(1, 2, 4, 8),
                                                                            m(1, 2, 4, 8)),
    "acos": lambda m: torch.acos(m(4)), "asin": lambda m: torch.asin(m(4)), "cosh": lambda m: torch.cosh(m(4)),
    "erfinv": lambda m: torch.erfinv(m(4)), "exp": lambda m: torch.exp(m(4)), "expm1": lambda m: torch.expm1(m(4)),
    "log": lambda m: torch.log(m(4)), "log10": lambda m: torch.log10(m(4)), "log2": lambda m: torch.log2(m(4)),
    "log1p": lambda m: torch.log1p(m(4)), "reciprocal": lambda m: torch.reciprocal(m(4)),
    "rsqrt": lambda m: torch.rsqrt(m(4)), "sinh": lambda m: torch.sinh(m(4)), "tan": lambda m: torch.tan(m(4)),
    "pow": lambda m: torch.pow(m(4), 2.0), "__pow__": lambda m: m(4).__pow__(2.0),
    "__rpow__": lambda m: m(4).__rpow__(2.0),
    "softplus": lambda m: F.softplus(m(4)),
    "layer_norm": lambda m: F.layer_norm(m(2, 8), (8,), m(8), m(8)),
    "group_norm": lambda m: F.group_norm(m(2, 4, 3), 2, m(4), m(4)),
    "rms_norm": lambda m: F.rms_norm(m(2, 8), (8,), m(8)),
    "norm": lambda m: torch.norm(m(4)),
    "cosine_similarity": lambda m: F.cosine_similarity(m(2, 8), m(2, 8)),
    "normalize": lambda m: F.normalize(m(2, 8)),
    "softmax": lambda m: torch.softmax(m(2, 8), -1), "log_softmax": lambda m: torch.log_softmax(m(2, 8), -1),
    "softmin": lambda m: F.softmin(m(2, 8), -1),
    "logsumexp": lambda m: torch.logsumexp(m(2, 8), -1),
    "cumsum": lambda m: torch.cumsum(m(4), 0), "cumprod": lambda m: torch.cumprod(m(4), 0),
    "prod": lambda m: torch.prod(m(4)), "sum": lambda m: torch.sum(m(4)),
    "dist": lambda m: torch.dist(m(4), m(4)), "cdist": lambda m: torch.cdist(m(1, 2, 8), m(1, 3, 8)),
    "pdist": lambda m: F.pdist(m(3, 8)), "renorm": lambda m: torch.renorm(m(2, 4), 2, 0, 1.0),
    "mse_loss": lambda m: F.mse_loss(m(4), m(4)), "l1_loss": lambda m: F.l1_loss(m(4), m(4)),
    "smooth_l1_loss": lambda m: F.smooth_l1_loss(m(4), m(4)), "huber_loss": lambda m: F.huber_loss(m(4), m(4)),
    "kl_div": lambda m: F.kl_div(m(4), m(4), reduction="sum"),
    "binary_cross_entropy_with_logits": lambda m: F.binary_cross_entropy_with_logits(m(4), m(4)),
    "soft_margin_loss": lambda m: F.soft_margin_loss(m(4), m(4)),
    "margin_ranking_loss": lambda m: F.margin_ranking_loss(m(4), m(4), m(4)),
    "hinge_embedding_loss": lambda m: F.hinge_embedding_loss(m(4), m(4)),
    "cosine_embedding_loss": lambda m: F.cosine_embedding_loss(m(2, 8), m(2, 8), m(2)),
    "triplet_margin_loss": lambda m: F.triplet_margin_loss(m(2, 8), m(2, 8), m(2, 8)),
    "poisson_nll_loss": lambda m: F.poisson_nll_loss(m(4), m(4)),
    "gelu": lambda m: F.gelu(m(4)), "relu": lambda m: F.relu(m(4)), "silu": lambda m: F.silu(m(4)),
    "tanh": lambda m: torch.tanh(m(4)), "sigmoid": lambda m: torch.sigmoid(m(4)),
    "dropout": lambda m: F.dropout(m(4), 0.0),
    "batch_norm": lambda m: F.batch_norm(m(2, 4), None, None, m(4), m(4), training=True),
    "instance_norm": lambda m: F.instance_norm(m(1, 4, 3)),
}
# Functions whose probe needs integer targets (the class index stays int64 in every precision).
_CLASS_TARGET_PROBES: dict[str, Callable[[Make, Callable[..., torch.Tensor]], torch.Tensor]] = {
    "cross_entropy": lambda m, i: F.cross_entropy(m(2, 4), i(2)),
    "nll_loss": lambda m, i: F.nll_loss(m(2, 4), i(2)),
    "multi_margin_loss": lambda m, i: F.multi_margin_loss(m(2, 4), i(2)),
    "multilabel_margin_loss": lambda m, i: F.multilabel_margin_loss(m(2, 4), i(2, 4)),
}

# torch 2.13's CUDA answer, for a probe that cannot run (old torch, a function it lacks); RNNs are
# lower precision on both devices (cuDNN / oneDNN) and run through _VF, which no small probe reaches.
FALLBACK_LOWER = frozenset({
    "linear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "addmv", "addr", "mv",
    "einsum", "chain_matmul", "multi_dot", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "conv_tbc", "prelu", "scaled_dot_product_attention", "lstm", "gru", "rnn_tanh", "rnn_relu",
    "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
})
FALLBACK_FP32 = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow", "__pow__", "__rpow__", "softplus", "layer_norm", "group_norm", "norm", "cosine_similarity",
    "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "hinge_embedding_loss", "kl_div", "l1_loss",
    "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss",
    "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist",
    "renorm", "logsumexp", "softmax", "log_softmax", "softmin", "cross_entropy", "cumsum", "cumprod", "prod", "sum",
    "normalize", "rms_norm",
})


def fallback(name: str) -> str:
    return LOWER if name in FALLBACK_LOWER else FP32 if name in FALLBACK_FP32 else UNCHANGED


@contextlib.contextmanager
def forced_autocast(device: str, dtype: torch.dtype, cache: bool = False) -> Iterator[None]:
    """Real autocast for DEVICE without torch.autocast's "is this device available" check (so FakeTensorMode
    CUDA tensors get torch's AutocastCUDA kernels on a machine without a GPU). The weight-cast cache is
    off unless CACHE, and cleared on exit."""
    enabled, old_dtype = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
    cache_enabled = torch.is_autocast_cache_enabled()
    torch.set_autocast_enabled(device, True)
    torch.set_autocast_dtype(device, dtype)
    torch.set_autocast_cache_enabled(cache)
    try:
        yield
    finally:
        torch.set_autocast_enabled(device, enabled)
        torch.set_autocast_dtype(device, old_dtype)
        torch.set_autocast_cache_enabled(cache_enabled)
        torch.clear_autocast_cache()


def _tensor_factory(device: str, dtype: torch.dtype) -> Make:
    return lambda *shape: torch.full(shape, 0.5, dtype=dtype, device=device)


def _classify(device: str, lower: torch.dtype, call: Callable[[torch.dtype], torch.Tensor]) -> str | None:
    """LOWER if fp32 inputs come out in LOWER, FP32 if LOWER inputs come out in fp32, else UNCHANGED;
    None if the probe cannot run."""
    try:
        with forced_autocast(device, lower):
            from_fp32 = call(torch.float32)
            from_lower = call(lower)
    except Exception:  # noqa: BLE001 - a probe that cannot run falls back to the written answer
        return None
    if from_fp32.dtype == lower:
        return LOWER
    if from_lower.dtype == torch.float32:
        return FP32
    return UNCHANGED


def _probe_context(device: str):
    if device == "cuda" and not torch.cuda.is_available():
        from torch._subclasses.fake_tensor import FakeTensorMode
        return FakeTensorMode()
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def autocast_policy(device: str, lower: torch.dtype) -> dict[str, str]:
    """{function name: LOWER | FP32 | UNCHANGED} under torch.autocast(DEVICE, dtype=LOWER), probed once."""
    policy: dict[str, str] = {}
    names = sorted(set(PROBES) | set(_CLASS_TARGET_PROBES) | FALLBACK_LOWER | FALLBACK_FP32)
    try:
        context = _probe_context(device)
    except Exception:  # noqa: BLE001 - no fake CUDA in this torch: the written answer throughout
        return {name: fallback(name) for name in names}
    with context, torch.random.fork_rng(devices=[]):  # a probe (dropout) must not move the user's RNG
        for name in names:
            probe, target_probe = PROBES.get(name), _CLASS_TARGET_PROBES.get(name)
            answer = None
            if probe is not None:
                answer = _classify(device, lower, lambda dtype, p=probe: p(_tensor_factory(device, dtype)))
            elif target_probe is not None:
                def indices(*shape):
                    return torch.zeros(shape, dtype=torch.long, device=device)
                answer = _classify(device, lower,
                                   lambda dtype, p=target_probe: p(_tensor_factory(device, dtype), indices))
            policy[name] = answer if answer is not None else fallback(name)
    return policy
