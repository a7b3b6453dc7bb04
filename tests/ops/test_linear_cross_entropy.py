"""The tied head's cross-entropy: the chunked op against the reference that materialises the logits.

float64 on odd sizes, chunks that do not divide N (CHUNK_ELEMENTS is lowered so a handful
of rows make a chunk), ignored targets at the first and last positions and a chunk with no
target at all, both reductions, gradients of the hidden states and of the (tied) weight.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TOL, assert_close

from grassmann_flows.models import build_model
from grassmann_flows.ops import linear_cross_entropy as op
from grassmann_flows.ops.linear_cross_entropy import chunked

IGNORE = -100


def inputs(n: int, d: int, vocab: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=dtype)
    weight = torch.randn(vocab, d, generator=g, dtype=dtype) * 0.5
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[0] = targets[-1] = IGNORE  # edges without a target
    targets[5:9] = IGNORE  # a whole chunk of 4 rows without a target
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, reduction):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w, targets, ignore_index=IGNORE, reduction=reduction)
    (loss * 1.7).backward()  # an upstream gradient other than 1
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [1, 23, 64])
def test_chunked_equals_reference_float64_with_gradients(n: int, reduction: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    vocab = 37
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 4 * vocab)  # 4 rows a chunk: n=23 ends on a ragged chunk
    hidden, weight, targets = inputs(max(n, 10), 11, vocab, torch.float64)
    hidden, targets = hidden[:n], targets[:n]
    expected = loss_and_grads(op.linear_cross_entropy_reference, hidden, weight, targets, reduction)
    actual = loss_and_grads(op.linear_cross_entropy, hidden, weight, targets, reduction)
    for name, a, e in zip(("loss", "grad hidden", "grad weight"), actual, expected):
        if n == 1:  # the only row is ignored: mean is NaN and sum 0, as in F.cross_entropy
            assert torch.equal(a.isnan(), e.isnan()), name
            continue
        assert_close(name, a, e, TOL[torch.float64])


def test_without_grad_it_computes_the_loss_only(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden, weight, targets = inputs(50, 8, 29, torch.float64)
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 7 * 29)
    with torch.no_grad():
        loss = op.linear_cross_entropy(hidden.requires_grad_(), weight, targets, IGNORE, "sum")
    assert loss.grad_fn is None
    assert_close("loss", loss, op.linear_cross_entropy_reference(hidden.detach(), weight, targets, IGNORE, "sum"),
                 TOL[torch.float64])


def test_float32_and_bf16_autocast_stay_within_their_dtype_tolerance() -> None:
    hidden, weight, targets = inputs(40, 16, 301, torch.float64)
    exact = loss_and_grads(op.linear_cross_entropy_reference, hidden, weight, targets, "mean")
    f32 = loss_and_grads(op.linear_cross_entropy, hidden.float(), weight.float(), targets, "mean")
    for name, a, e in zip(("loss", "grad hidden", "grad weight"), f32, exact):
        assert_close(name, a, e, TOL[torch.float32])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = loss_and_grads(op.linear_cross_entropy, hidden.float(), weight.float(), targets, "mean")
    for name, a, e in zip(("loss", "grad hidden", "grad weight"), bf16, exact):
        assert_close(name, a, e, 2 * TOL[torch.bfloat16])  # bf16 logits and bf16 products


def test_bad_reduction_is_refused() -> None:
    hidden, weight, targets = inputs(12, 4, 9, torch.float64)
    with pytest.raises(ValueError, match="reduction"):
        op.linear_cross_entropy(hidden, weight, targets, IGNORE, "none")


@pytest.mark.parametrize("kind", ["transformer", "grassmann"])
def test_model_loss_equals_cross_entropy_of_its_logits(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`LanguageModel(ids, targets=...)` (the chunked head) against CE of `forward`'s logits, every parameter's gradient."""
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 5 * 97)
    torch.manual_seed(0)
    model = build_model(kind, "paper", vocab_size=97, d_model=16, n_heads=2, d_ff=32, n_layers=2, n_positions=13,
                        reduced_dim=4, dropout=0.0).double()
    ids = torch.randint(0, 97, (3, 13))
    targets = ids.roll(-1, 1)
    targets[:, -1] = IGNORE
    grads = {}
    for name, loss_of in (("ref", lambda: torch.nn.functional.cross_entropy(
                              model(ids).flatten(0, 1), targets.flatten(), ignore_index=IGNORE)),
                          ("chunked", lambda: model(ids, targets=targets))):
        model.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        grads[name] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert_close("loss", grads["chunked"][0], grads["ref"][0], TOL[torch.float64])
    for n, g in grads["ref"][1].items():
        assert_close(n, grads["chunked"][1][n], g, TOL[torch.float64])
