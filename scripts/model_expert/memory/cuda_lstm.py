"""nn.LSTM as CUDA runs it: one cuDNN RNN call for all layers, with its reserve space.

On meta tensors torch.lstm takes PyTorch's native per-step kernels (a separate gate tensor per step and
layer saved for backward), and torch's own meta kernel for _cudnn_rnn reports a reserve of 0 bytes
(torch/_meta_registrations.py: "TODO: Query cudnnGetRNNTrainingReserveSize"). On the CUDA target the
estimate replays what aten/src/ATen/native/cudnn/RNN.cpp does around cuDNN:
- forward (_cudnn_rnn): `x = input.transpose(0, 1).contiguous()` for batch_first (a time-major copy,
  freed on return), the time-major output y, hy, cy, and the reserve space cuDNN reports for training
  (cudnnGetRNNTempSpaceSizes); autograd saves input, hx, cx, the weights, y and the reserve
  (tools/autograd/derivatives.yaml, _cudnn_rnn);
- backward (_cudnn_rnn_backward): zeros for the gradients of unused hy/cy, then _cudnn_rnn_backward_input
  (x and dy as time-major contiguous copies, dx, dhx, dcx) and _cudnn_rnn_backward_weight (x again, and dw:
  one flat zero buffer the weight gradients are views of).
The reserve size is cuDNN's, not PyTorch's. Modelled: per layer, direction, step, sample and hidden unit, one
value of the RNN's dtype for each of the 4 gates and the cell state, plus the hidden output of every layer but
the last (the next layer's input, which backward-weights needs; the last layer's is y, which backward is
given): (6 x layers - 1) x directions x steps x batch x hidden values. Source: the H200 measurement in
../shared/gpu_measurements (lstm-lm-fp32-adam: 2 layers, batch 64 x 128 steps, hidden 1024, fp32). The
storages autograd saved, 881,524,996 B, less every other saved storage (log-softmax 327,680,000; LSTM output
33,554,432 and the Linear's contiguous copy of it 33,554,432 (matmul folds the transposed batch-first output);
embedding output 16,777,216; weights 99,745,792; ids 65,536; h0/c0 1,048,576; 260 B of scalars) leave
369,098,752 B = (6 x 2 - 1) x 128 x 64 x 1024 x 4 B exactly, and the step's measured peak (at the log-softmax
backward) is then matched to the byte. cuDNN's workspaces (forward and backward) are transient and not
reported by any API torch exposes; they are left out (stated).
"""

from __future__ import annotations

from typing import Callable

import torch

GATES_AND_CELL = 5  # LSTM: i, f, g, o and c_t per layer, direction, step, sample and hidden unit


def reserve_values_per_hidden(num_layers: int) -> int:
    """Values kept per direction, step, sample and hidden unit: 5 per layer + the inner layers' outputs = 6L - 1."""
    return GATES_AND_CELL * num_layers + (num_layers - 1)


def reserve_bytes(steps: int, batch: int, hidden: int, num_layers: int, directions: int, dtype: torch.dtype) -> int:
    """cuDNN's LSTM training reserve: (6 x layers - 1) x directions x steps x batch x hidden values of DTYPE."""
    element = torch.empty((), dtype=dtype, device="meta").element_size()
    return reserve_values_per_hidden(num_layers) * directions * steps * batch * hidden * element


def applies(args: tuple, kwargs: dict) -> bool:
    """The dense-input overload torch.lstm(input, (h0, c0), params, has_biases, num_layers, dropout, train,
    bidirectional, batch_first) on meta, without proj_size: what cuDNN runs (training keeps a reserve,
    inference none)."""
    if kwargs or len(args) != 9 or not isinstance(args[1], (tuple, list)) or len(args[1]) != 2:
        return False
    input_ = args[0]
    if not isinstance(input_, torch.Tensor) or input_.device.type != "meta" or input_.dim() != 3:
        return False
    if input_.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return False
    return all(p.shape[0] == 4 * args[1][0].shape[-1] for p in args[2])  # proj_size changes the layout


def cudnn_kernels(phase: str, steps: int, batch: int, input_size: int, hidden: int, num_layers: int, directions: int,
                  dtype: torch.dtype) -> list[tuple[str, int, int, int]]:
    """cuDNN's kernels for one LSTM call, as (name, FLOPs, bytes, launches), for the step-time model: per layer
    and direction, the input projection of all steps as one GEMM and the recurrence as one small GEMM + gate
    kernel per step (its weights stay in L2); backward: the recurrence per step, then one GEMM for the input
    gradient and one for the weight gradients over all steps."""
    element = torch.empty((), dtype=dtype, device="meta").element_size()
    gates = 4 * hidden
    kernels = []
    for layer in range(num_layers):
        width = input_size if layer == 0 else hidden * directions
        rows = steps * batch
        for _ in range(directions):
            projection = (2 * rows * width * gates, (rows * width + width * gates + rows * gates) * element)
            recurrence = (2 * rows * hidden * gates, rows * (hidden + 2 * gates + 2 * hidden) * element)
            if phase == "forward":
                kernels += [("cudnn_lstm_input_gemm", *projection, 1), ("cudnn_lstm_recurrent_step", *recurrence, steps)]
            else:
                weight_grad = (2 * rows * (width + hidden) * gates,
                               (rows * (width + hidden + gates) + (width + hidden) * gates) * element)
                kernels += [("cudnn_lstm_recurrent_step_backward", *recurrence, steps),
                            ("cudnn_lstm_input_grad_gemm", *projection, 1),
                            ("cudnn_lstm_weight_grad_gemm", *weight_grad, 1)]
    return kernels


class _CudnnLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_, h0, c0, batch_first, directions, reserve, sink, *weights):
        time_major = input_.transpose(0, 1) if batch_first else input_
        x = time_major.contiguous()
        hidden = h0.shape[-1]
        y = x.new_empty(x.shape[0], x.shape[1], hidden * directions)
        hy, cy = torch.empty_like(h0), torch.empty_like(c0)
        reserve_buffer = torch.empty(reserve, dtype=torch.uint8, device=input_.device)
        del x
        output = y.transpose(0, 1) if batch_first else y
        ctx.batch_first, ctx.sink = batch_first, sink
        if sink is not None:
            steps, batch, width = time_major.shape
            ctx.shape = (steps, batch, width, hidden, h0.shape[0] // directions, directions, time_major.dtype)
            sink(cudnn_kernels("forward", *ctx.shape))
        ctx.save_for_backward(input_, h0, c0, output, reserve_buffer, *weights)
        return output, hy, cy

    @staticmethod
    def backward(ctx, grad_output, grad_hy, grad_cy):
        input_, h0, c0, output, reserve_buffer, *weights = ctx.saved_tensors
        batch_first = ctx.batch_first
        if ctx.sink is not None:
            ctx.sink(cudnn_kernels("backward", *ctx.shape))

        def time_major(tensor):
            return (tensor.transpose(0, 1) if batch_first else tensor).contiguous()
        # _cudnn_rnn_backward_input
        x, dy = time_major(input_), time_major(grad_output)
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dhx, dcx = torch.empty_like(h0), torch.empty_like(c0)
        del x, dy
        # _cudnn_rnn_backward_weight
        x = time_major(input_)
        dw = torch.zeros(sum(w.numel() for w in weights), dtype=weights[0].dtype, device=weights[0].device)
        del x
        grads, offset = [], 0
        for w in weights:
            grads.append(dw[offset:offset + w.numel()].view(w.shape))
            offset += w.numel()
        return (dx.transpose(0, 1) if batch_first else dx), dhx, dcx, None, None, None, None, *grads


def run(args: tuple, sink: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """at::_cudnn_rnn for an LSTM, on meta tensors, with cuDNN's training reserve; SINK (when given) is told
    cuDNN's kernels (cudnn_kernels) as forward and backward run."""
    input_, (h0, c0), params, has_biases, num_layers, dropout, train, bidirectional, batch_first = args
    directions = 2 if bidirectional else 1
    steps, batch = (input_.shape[1], input_.shape[0]) if batch_first else (input_.shape[0], input_.shape[1])
    reserve = reserve_bytes(steps, batch, h0.shape[-1], num_layers, directions, input_.dtype) if train else 0
    output, hy, cy = _CudnnLSTM.apply(input_, h0.contiguous(), c0.contiguous(), batch_first, directions, reserve,
                                      sink, *params)
    return output, hy, cy


def describe() -> str:
    return ("nn.LSTM on the CUDA target: one cuDNN RNN call (aten/src/ATen/native/cudnn/RNN.cpp) with the time-major "
            "copies torch makes, a reserve of (6 x layers - 1) values per direction, step, sample and hidden unit (gates "
            "and cell state per layer, inner layers' outputs; matches the H200 measurement) and flat weight gradients; "
            "cuDNN's transient workspaces not modelled")
