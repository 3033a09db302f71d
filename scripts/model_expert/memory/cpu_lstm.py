"""nn.LSTM as the CPU runs it: oneDNN's mkldnn_rnn_layer per layer and direction, with its workspace.

On meta tensors torch.lstm takes PyTorch's native per-step kernels, which save other tensors than the
oneDNN path a CPU takes for training, and torch's own meta kernel for mkldnn_rnn_layer reports a
workspace of 0 bytes. On the CPU target the estimate therefore replays what at::mkldnn_rnn does
(aten/src/ATen/native/mkldnn/RNN.cpp): a contiguous time-major copy of the input, one
mkldnn_rnn_layer per layer and direction, cat of the directions, dropout between layers, stacked
final states. What the kernel allocates is asked of the real kernel, on zero tensors of the same
sizes, under the CPU allocator's watch (torch.profiler): the workspace it returns, which the autograd
graph keeps until the layer's backward has run, and the transient bytes (weight reorders, scratchpad)
it frees before returning. Its backward's transient bytes are asked the same way and held while that
backward runs.
"""

from __future__ import annotations

import functools

import torch

from .cpu_kernels import HoldUntilBackward, KernelBytes, ScratchInBackward, linear_in_batch, outside_every_mode, watched

LSTM_MODE = 2  # ideep::rnn_kind::LSTM, the mode at::lstm passes to mkldnn_rnn_layer


@functools.lru_cache(maxsize=None)
def cpu_takes_onednn(dtype: torch.dtype, grad_enabled: bool) -> bool:
    """Whether this torch, on this CPU, runs a training LSTM of DTYPE through mkldnn_rnn_layer (asked by running
    a one-step LSTM and watching the ops: it depends on the build, the CPU's bf16/fp16 support, the grad mode)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watch(TorchDispatchMode):
        seen = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.mkldnn_rnn_layer.default:
                Watch.seen = True
            return func(*args, **(kwargs or {}))

    with outside_every_mode(), torch.random.fork_rng(devices=[]):  # its initialisation must not move the RNG
        lstm = torch.nn.LSTM(4, 4, device="cpu").to(dtype)
        with torch.set_grad_enabled(grad_enabled), Watch():
            lstm(torch.zeros(1, 1, 4, dtype=dtype, device="cpu"))
    return Watch.seen


@functools.lru_cache(maxsize=None)
def _kernel_bytes_at(steps: int, batch: int, input_size: int, hidden: int, dtype: torch.dtype, num_layers: int,
                     bidirectional: bool, batch_first: bool, train: bool, grad_enabled: bool) -> KernelBytes:
    """One real mkldnn_rnn_layer call (and, with grad, its backward) on zeros, watched by the CPU allocator."""
    def zeros(*shape, grad=False):
        return torch.zeros(*shape, dtype=dtype, device="cpu", requires_grad=grad and grad_enabled)
    with outside_every_mode(), torch.set_grad_enabled(grad_enabled):
        tensors = [zeros(steps, batch, input_size, grad=True), zeros(4 * hidden, input_size, grad=True),
                   zeros(4 * hidden, hidden, grad=True), zeros(4 * hidden, grad=True), zeros(4 * hidden, grad=True),
                   zeros(batch, hidden), zeros(batch, hidden)]
        outputs, peak, _ = watched(lambda: torch.ops.aten.mkldnn_rnn_layer(
            *tensors, False, [], LSTM_MODE, hidden, num_layers, True, bidirectional, batch_first, train))
        kept = sum(o.numel() * o.element_size() for o in outputs if o is not None)
        workspace = outputs[3].numel() * outputs[3].element_size() if outputs[3] is not None else 0
        backward_transient = 0
        if grad_enabled and outputs[0].requires_grad:
            seed = torch.ones_like(outputs[0])
            _, backward_peak, backward_kept = watched(
                lambda: torch.autograd.grad(outputs[0], tensors[:5], seed))
            backward_transient = max(backward_peak - backward_kept, 0)
    return KernelBytes(workspace=workspace, transient=max(peak - kept, 0), backward_transient=backward_transient)


EXACT_BATCH_LIMIT = 64  # up to this batch the kernel is asked at the batch itself; above, at 32 and 64


def kernel_bytes(steps: int, batch: int, input_size: int, hidden: int, dtype: torch.dtype, num_layers: int,
                 bidirectional: bool, batch_first: bool, train: bool) -> KernelBytes:
    """oneDNN's workspace and transient bytes for one layer and direction (asked at the batch itself up to
    EXACT_BATCH_LIMIT, linear beyond)."""
    return linear_in_batch(lambda b: _kernel_bytes_at(steps, b, input_size, hidden, dtype, num_layers, bidirectional,
                                                      batch_first, train, torch.is_grad_enabled()),
                           batch, EXACT_BATCH_LIMIT)


def applies(args: tuple, kwargs: dict) -> bool:
    """The dense-input overload torch.lstm(input, (h0, c0), params, has_biases, num_layers, dropout, train,
    bidirectional, batch_first), on meta, whose dtype the CPU runs through oneDNN."""
    if kwargs or len(args) != 9 or not isinstance(args[1], (tuple, list)) or len(args[1]) != 2:
        return False
    input_ = args[0]
    if not isinstance(input_, torch.Tensor) or input_.device.type != "meta" or input_.dim() != 3:
        return False
    params = args[2]
    if any(p.shape[0] != 4 * args[1][0].shape[-1] for p in params):  # proj_size: not oneDNN
        return False
    return cpu_takes_onednn(input_.dtype, torch.is_grad_enabled())


def run(args: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """at::mkldnn_rnn for an LSTM, on meta tensors, with the workspace of the real kernel."""
    input_, (h0, c0), params, has_biases, num_layers, dropout, train, bidirectional, batch_first = args
    directions = 2 if bidirectional else 1
    per_layer = 4 if has_biases else 2
    hidden = h0.shape[-1]
    layer_input = (input_.transpose(0, 1) if batch_first else input_).contiguous()
    h0, c0 = h0.contiguous(), c0.contiguous()
    steps, batch = layer_input.shape[0], layer_input.shape[1]
    hy, cy = [], []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            weights = list(params[index * per_layer:(index + 1) * per_layer])
            if not has_biases:
                weights += [torch.zeros(weights[0].shape, dtype=weights[0].dtype, device=weights[0].device),
                            torch.zeros(weights[1].shape, dtype=weights[1].dtype, device=weights[1].device)]
            sizes = kernel_bytes(steps, batch, layer_input.shape[-1], hidden, layer_input.dtype, num_layers,
                                 bidirectional, batch_first, train)
            holder = next((i for i, t in enumerate([layer_input, *weights[:2]]) if t.requires_grad), None)
            this_input = layer_input
            backward_scratch: list[torch.Tensor] = []
            in_graph = sizes.workspace and torch.is_grad_enabled() and holder is not None
            if in_graph:
                workspace = torch.empty(sizes.workspace, dtype=torch.uint8, device=layer_input.device)
                if holder == 0:
                    this_input = HoldUntilBackward.apply(layer_input, workspace, backward_scratch)
                else:
                    weights[holder - 1] = HoldUntilBackward.apply(weights[holder - 1], workspace, backward_scratch)
                del workspace
            # A workspace no graph keeps is freed as the kernel returns: transient, like the scratch.
            transient = sizes.transient + (0 if in_graph else sizes.workspace)
            scratch = torch.empty(transient, dtype=torch.uint8, device=layer_input.device)
            out, h, c, _ = torch.ops.aten.mkldnn_rnn_layer(
                this_input, *weights, h0[index], c0[index], direction > 0, [], LSTM_MODE, hidden, num_layers,
                has_biases, bidirectional, batch_first, train)
            del scratch
            if in_graph and sizes.backward_transient:
                out = ScratchInBackward.apply(out, sizes.backward_transient, backward_scratch)
            outputs.append(out)
            hy.append(h)
            cy.append(c)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, -1)
        if dropout and train and layer < num_layers - 1:
            layer_input = torch.nn.functional.dropout(layer_input, dropout, True)
    output = layer_input.transpose(0, 1) if batch_first else layer_input
    return output, torch.stack(hy, 0), torch.stack(cy, 0)


def describe() -> str:
    return ("nn.LSTM on the CPU target: oneDNN's mkldnn_rnn_layer per layer and direction, with the workspace, weight "
            "reorders and scratch (forward and backward) the real kernel allocates for the same sizes under the CPU "
            f"allocator's watch (asked at the batch itself up to {EXACT_BATCH_LIMIT}, linear beyond)")
