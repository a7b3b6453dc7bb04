"""Cross-entropy of a linear head without the (N, V) logits in memory.

For a block of `chunk` rows at a time: logits = h W^T, the log-sum-exp, the loss, and,
when a gradient is wanted, dlogits = softmax - onehot, dh = dlogits W and dW += dlogits^T h.
The backward pass only scales the saved dh and dW by the incoming gradient. The result is
the reference's (`naive.py`) up to the order of float sums.

Why: at the paper's B x L = 4,096 tokens and the BERT vocabulary (V = 30,522) the logits,
their softmax and its gradient are three 500 MB float32 tensors per step. On the CPU the
allocator maps each afresh and page-faults it in on every step: at d = 128 that was 1.9 s
of a 3.3 s step on one core. A chunk's few MB are reused instead. The (V, d) weight
gradient is the only large buffer, and it exists in the reference too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 21  # logits per chunk: 8 MB in float32, far below glibc's 32 MB mmap threshold


def _chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,  # type: ignore[override]
                ignore_index: int, reduction: str, needs_grad: bool) -> torch.Tensor:
        n, step = hidden.shape[0], _chunk_rows(weight.shape[0])
        valid = targets != ignore_index
        count = int(valid.sum())
        scale = 1.0 / count if reduction == "mean" and count else 1.0
        acc = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if needs_grad else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if needs_grad else None
        for start in range(0, n, step):
            h, t, v = hidden[start:start + step], targets[start:start + step], valid[start:start + step]
            logits = F.linear(h, weight).to(acc)  # (c, V), at least float32
            lse = torch.logsumexp(logits, dim=1)
            safe_t = t.masked_fill(~v, 0)
            picked = logits.gather(1, safe_t[:, None]).squeeze(1)
            total += ((lse - picked) * v).sum()
            if needs_grad:
                # dlogits = (softmax - onehot) * scale on valid rows, 0 on ignored ones; in place on `logits`
                dlogits = logits.sub_(lse[:, None]).exp_()
                dlogits[torch.arange(len(t), device=t.device), safe_t] -= 1.0
                dlogits.mul_(v.to(dlogits.dtype)[:, None] * scale)
                grad_h[start:start + step] = (dlogits.to(h.dtype) @ weight.to(h.dtype)).to(hidden.dtype)
                grad_w.addmm_(dlogits.t(), h.to(acc))
        if needs_grad:
            ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        if reduction == "mean" and not count:
            return total * float("nan")  # F.cross_entropy's mean over no target (its gradients are 0)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out.to(grad_w.dtype), None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """CE(hidden @ weight^T, targets) in chunks of rows; the same signature and result as
    `linear_cross_entropy_reference`. hidden: (N, d); weight: (V, d); targets: (N,).

    The gradients are computed during the forward pass when autograd will want them (grad
    mode on and `hidden` or `weight` requiring grad), so the loss must be backpropagated
    once, as a training step does; it supports no double backward.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, reduction, needs_grad)
