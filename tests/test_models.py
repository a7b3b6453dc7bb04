"""Model tests: fast == naive mixer (float64), causality, parameter counts, checkpoints,
SNLI classifiers, option validation and the count_params script.

All on CPU with small widths; paper sizes are only built for the parameter counts.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from grassmann_flows.models import (
    build_classifier,
    build_model,
    count_parameters,
    resolve_config,
)
from grassmann_flows.models.config import MixerConfig, ModelConfig
from grassmann_flows.models.mixer.fast import fast_features
from grassmann_flows.models.mixer.naive import naive_features

REPO = Path(__file__).resolve().parent.parent
REL_TOL = 1e-10
DT = torch.float64


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tensors are tiny: one intra-op thread is faster, and much faster when other
    processes share the cores (OpenMP workers spin). Restored for other test modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref| (with a tiny floor so an all-zero reference needs a ~ 0)."""
    assert a.shape == ref.shape, (a.shape, ref.shape)
    scale = max(ref.abs().max().item(), 1e-30) if ref.numel() else 1.0
    return (a - ref).abs().max().item() / scale if ref.numel() else 0.0


def assert_rel_close(a: torch.Tensor, ref: torch.Tensor, what: str, tol: float = REL_TOL) -> None:
    assert torch.isfinite(ref).all(), f"{what}: reference not finite"
    assert torch.isfinite(a).all(), f"{what}: not finite"
    err = rel_err(a, ref)
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.0e}"


def signed_offsets(offsets: tuple[int, ...], pairing: str) -> tuple[int, ...]:
    """The signed offset multiset a layer uses, through the config's own rule."""
    cfg = ModelConfig(mixer=MixerConfig(offsets=offsets, pairing=pairing), causal=False)
    return cfg.layer_offsets(0)


def feature_grads(impl: str, z, W, b, offs, cfg, pad_mask, gout):
    """(g, dz, dW, db) of <g, gout> for one feature-path implementation."""
    z = z.detach().clone().requires_grad_(True)
    W = W.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    if impl == "naive":
        g = naive_features(z, [W], [b], offs, cfg, pad_mask)
    else:
        g = fast_features(z, W, b, offs, cfg, pad_mask)
    (g * gout).sum().backward()
    return g.detach(), z.grad, W.grad, b.grad


def compare_features(z, W, b, offs, cfg, pad_mask=None, seed=0, tol=REL_TOL):
    gen = torch.Generator().manual_seed(seed + 1)
    gout = torch.randn(z.shape[0], z.shape[1], W.shape[0], dtype=DT, generator=gen)
    ref = feature_grads("naive", z, W, b, offs, cfg, pad_mask, gout)
    got = feature_grads("fast", z, W, b, offs, cfg, pad_mask, gout)
    for name, a, r in zip(("g", "dz", "dW", "db"), got, ref):
        assert_rel_close(a, r, name, tol)
    return ref, got


def randomize_(model: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Add noise to every parameter: GPT-2 init zeroes all biases, which would hide
    every bias-placement difference (empty_value, sum vs mean bias counts)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, dtype=p.dtype, generator=gen))
    return model


SMALL = dict(vocab_size=37, d_model=16, d_ff=32, n_heads=4, reduced_dim=6, n_positions=64, dropout=0.0)


def small_lm(kind, preset, n_layers, seed=0, **options):
    torch.manual_seed(seed)
    opts = {**SMALL, **options}
    if kind == "transformer":
        opts = {k: v for k, v in opts.items() if k != "reduced_dim"}
    return build_model(kind, preset=preset, n_layers=n_layers, **opts).to(DT).eval()


# ------------------------------------------------- 1a. fast == naive, feature level

R, D = 6, 8
LENGTHS = (1, 2, 15, 17, 63, 257)
# 3 twice (duplicate: no-op for the mean, counts twice in a sum); 16 and 17 straddle
# L = 17; 300 is >= every tested L, so it never has a partner (t < Delta everywhere).
OFFSETS = (1, 3, 3, 16, 17, 300)
COMBOS = list(itertools.product(
    (True, False),                           # normalize
    ("normalize_first", "average_first"),    # norm_order
    ("mean", "sum"),                         # aggregation
    ("zero", "bias"),                        # empty_value
    ("clamp", "sqrt_add"),                   # norm_form
    ("past", "future_literal", "both"),      # pairing
))


def combo_id(c):
    n, o, a, e, f, p = c
    return f"{'norm' if n else 'raw'}-{o}-{a}-{e}-{f}-{p}"


def mixer_cfg(combo, **extra) -> MixerConfig:
    n, o, a, e, f, p = combo
    return MixerConfig(
        reduced_dim=R, offsets=OFFSETS, normalize=n, norm_order=o, aggregation=a,
        empty_value=e, norm_form=f, pairing=p, **extra,
    )


def random_inputs(L, seed, B=2):
    gen = torch.Generator().manual_seed(seed)
    P = R * (R - 1) // 2
    z = torch.randn(B, L, R, dtype=DT, generator=gen)
    W = 0.3 * torch.randn(D, P, dtype=DT, generator=gen)
    b = torch.randn(D, dtype=DT, generator=gen)
    return z, W, b


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_fast_matches_naive_features(combo, L):
    cfg = mixer_cfg(combo)
    offs = signed_offsets(OFFSETS, cfg.pairing)
    z, W, b = random_inputs(L, seed=L)
    (g, *_), _ = compare_features(z, W, b, offs, cfg, seed=L)
    if L == 1:  # no position has a partner: g is exactly 0 or exactly b_plü (W_t empty)
        expect = b.expand_as(g) if cfg.empty_value == "bias" else torch.zeros_like(g)
        assert torch.equal(g, expect)


@pytest.mark.parametrize("combo", [c for c in COMBOS if c[5] == "both"], ids=combo_id)
def test_fast_matches_naive_features_with_pad_mask(combo):
    """Classifier-style: padded tail, pairing both; padded partners are never paired."""
    cfg = mixer_cfg(combo)
    offs = signed_offsets(OFFSETS, cfg.pairing)
    L = 23
    z, W, b = random_inputs(L, seed=3, B=3)
    lengths = torch.tensor([L, 17, 2])
    pad_mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    (g, *_), _ = compare_features(z, W, b, offs, cfg, pad_mask=pad_mask, seed=3)
    # Whatever sits at padded positions never reaches a real position's features.
    for impl in ("naive", "fast"):
        z2 = z.clone()
        z2[pad_mask == 0] = torch.randn_like(z2[pad_mask == 0]) * 5
        g2 = feature_grads(impl, z2, W, b, offs, cfg, pad_mask, torch.ones(3, L, D, dtype=DT))[0]
        real = pad_mask.bool()
        assert torch.allclose(g2[real], g[real], rtol=0, atol=1e-12), impl


def _repeated_z(L, seed):
    """z_t == z_{t-Delta} for every t (all Plücker vectors are exactly 0), and a second
    sequence where only some partners repeat."""
    gen = torch.Generator().manual_seed(seed)
    const = torch.randn(1, 1, R, dtype=DT, generator=gen).expand(1, L, R)
    mixed = torch.randn(1, L, R, dtype=DT, generator=gen)
    for t in range(1, L, 2):
        mixed[:, t] = mixed[:, t - 1]
    return torch.cat([const, mixed], 0).contiguous()


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_repeated_tokens_give_finite_gradients(combo):
    """Zero Plücker norm (z_t == z_{t-Delta}): no NaN/Inf in either path, and they agree."""
    cfg = mixer_cfg(combo)
    offs = signed_offsets(OFFSETS, cfg.pairing)
    L = 20
    _, W, b = random_inputs(L, seed=5)
    z = _repeated_z(L, seed=5)
    # Agreement is looser here: for an exactly repeated partner the naive Plücker vector
    # is exactly 0, while the collapsed rewrite forms u ∧ (u / eps) and relies on the
    # GEMM cancelling, so rounding is amplified by ~|u||v|/eps (eps = 1e-6: ~1e-9 in
    # float64). The requirement proper is finiteness.
    ref, got = compare_features(z, W, b, offs, cfg, seed=5, tol=1e-7)
    for t in (*ref, *got):
        assert torch.isfinite(t).all()


# --------------------------------------------------- 1b. fast == naive, model level

MODEL_CASES = [
    ("paper", 6, {}),                                           # paper_postln, extra_proj g, six offsets
    ("paper", 12, {}),                                          # one offset per layer (1,1,2,2,...,16,16)
    ("paper", 6, {"extra_proj": "out"}),
    ("preln_all_offsets", 6, {"extra_proj": "g", "aggregation": "sum", "empty_value": "bias"}),
    ("preln_per_layer", 12, {"extra_proj": "g", "norm_order": "average_first"}),
    ("preln_all_offsets", 6, {}),                               # pre-LN, mixer_norm
    ("preln_all_offsets", 12, {"aggregation": "sum"}),          # duplicates count twice
    ("preln_per_layer", 6, {}),                                 # empty_value bias
    ("paper", 6, {"gate_output": "residual", "extra_proj": "in", "block": "postln"}),
    ("preln_all_offsets", 6, {"norm_order": "average_first", "norm_form": "sqrt_add", "empty_value": "bias"}),
    ("paper", 6, {"normalize": False, "block": "preln", "init": "pytorch"}),
    ("paper", 6, {"pairing": "future_literal", "aggregation": "sum", "extra_proj": "none"}),
]


def _case_id(c):
    preset, n, opts = c
    return f"{preset}-N{n}" + "".join(f"-{k}={v}" for k, v in opts.items())


def lm_grads(model, ids, targets):
    model.zero_grad(set_to_none=True)
    logits = model(ids)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("L", (1, 2, 17, 40))
@pytest.mark.parametrize("case", MODEL_CASES, ids=_case_id)
def test_fast_matches_naive_model(case, L):
    preset, n_layers, opts = case
    naive = randomize_(small_lm("grassmann", preset, n_layers, mixer_impl="naive", **opts), seed=1)
    fast = small_lm("grassmann", preset, n_layers, seed=99, mixer_impl="fast", **opts)
    fast.load_state_dict(naive.state_dict())
    assert {m.mixer_impl for m in naive.modules() if hasattr(m, "mixer_impl")} == {"naive"}
    assert {m.mixer_impl for m in fast.modules() if hasattr(m, "mixer_impl")} == {"fast"}
    gen = torch.Generator().manual_seed(L)
    ids = torch.randint(0, SMALL["vocab_size"], (2, L), generator=gen)
    targets = torch.randint(0, SMALL["vocab_size"], (2, L), generator=gen)
    ref_logits, ref_grads = lm_grads(naive, ids, targets)
    logits, grads = lm_grads(fast, ids, targets)
    assert_rel_close(logits, ref_logits, "logits")
    assert ref_grads.keys() == grads.keys()
    for name, ref in ref_grads.items():  # every parameter, the tied embedding included
        assert ref is not None and grads[name] is not None, name
        assert_rel_close(grads[name], ref, name)


@pytest.mark.parametrize("impl", ("naive", "fast"))
def test_repeated_tokens_model_gradients_finite(impl):
    """Constant input and no position signal: every first-layer pair has zero Plücker norm."""
    model = small_lm("grassmann", "paper", 6, mixer_impl=impl)
    with torch.no_grad():
        model.backbone.pos_emb.weight.zero_()
    ids = torch.full((2, 20), 7)
    model(ids).logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_fast_matches_naive_classifier_with_padding():
    models = {}
    for impl in ("naive", "fast"):
        torch.manual_seed(0)
        models[impl] = build_classifier(
            "grassmann", n_layers=2, mixer_impl=impl, **SMALL
        ).to(DT).eval()
    randomize_(models["naive"], seed=4)
    models["fast"].load_state_dict(models["naive"].state_dict())
    ids = torch.randint(0, SMALL["vocab_size"], (3, 21), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(21)[None] < torch.tensor([[21], [12], [3]])).long()
    out = {}
    for impl, m in models.items():
        m.zero_grad()
        logits = m(ids, mask)
        logits.square().sum().backward()
        out[impl] = (logits.detach(), {n: p.grad for n, p in m.named_parameters()})
    assert_rel_close(out["fast"][0], out["naive"][0], "logits")
    for name, ref in out["naive"][1].items():
        assert ref is not None, name
        assert_rel_close(out["fast"][1][name], ref, name)


@pytest.mark.parametrize("kind,block", [
    ("grassmann", "preln"), ("grassmann", "postln"), ("grassmann", "paper_postln"),
    ("transformer", "preln"), ("transformer", "postln"), ("transformer", "paper_postln"),
])
def test_block_layouts_match_their_formulas(kind, block):
    """Each layout is what Block's docstring (and paper §3.2 for paper_postln) says."""
    model = randomize_(small_lm(kind, "paper", 1, block=block), seed=8)
    blk = model.backbone.blocks[0]
    x = torch.randn(2, 9, SMALL["d_model"], dtype=DT, generator=torch.Generator().manual_seed(0))
    mix, ffn, n1, n2 = (lambda v: blk.mixer(v, None)), blk.ffn, blk.norm1, blk.norm2
    with torch.no_grad():
        if block == "preln":
            h = x + mix(n1(x))
            expect = h + ffn(n2(h))
        elif block == "postln" or kind == "transformer":  # the baseline has no paper layout
            h = n1(x + mix(x))
            expect = n2(h + ffn(h))
        else:  # blend -> LN -> (dropout) -> LN(h + FFN h): no residual around the mixer
            h = n1(mix(x))
            expect = n2(h + ffn(h))
        assert_rel_close(blk(x), expect, f"{kind}/{block}", tol=1e-13)


def test_fast_features_float32_near_parallel_pairs():
    """Nearly parallel z_t, z_{t-1} (sin ~ 1e-3, e.g. a reduction bias dominating W_red h):
    the float32 fast path should be about as accurate as the float32 naive path."""
    r, d, L = 32, 64, 64
    gen = torch.Generator().manual_seed(0)
    W = 0.05 * torch.randn(d, r * (r - 1) // 2, dtype=DT, generator=gen)
    b = torch.zeros(d, dtype=DT)
    z = torch.randn(1, 1, r, dtype=DT, generator=gen) + 1e-3 * torch.randn(1, L, r, dtype=DT, generator=gen)
    cfg = MixerConfig(reduced_dim=r, offsets=(1,), norm_eps=1e-6)
    ref = naive_features(z, [W], [b], (1,), cfg)
    naive32 = rel_err(naive_features(z.float(), [W.float()], [b.float()], (1,), cfg).double(), ref)
    fast32 = rel_err(fast_features(z.float(), W.float(), b.float(), (1,), cfg).double(), ref)
    assert naive32 < 1e-3
    assert fast32 < 10 * naive32, f"float32 fast {fast32:.1e} vs naive {naive32:.1e}"


# ------------------------------------------------------------------- 1c. dropout sites


def _noise_sites(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Where randomness enters a train-mode forward: the innermost modules whose inputs are
    equal in two forwards with different seeds but whose output is not, each with the
    fraction of its output elements that changed."""
    runs = []
    for seed in (1, 2):
        rec: dict[str, tuple[list[torch.Tensor], torch.Tensor]] = {}
        hooks = [
            m.register_forward_hook(lambda m, i, o, name=name: rec.__setitem__(
                name, ([t.clone() for t in i if torch.is_tensor(t)], o.detach().clone())))
            for name, m in model.named_modules() if name
        ]
        torch.manual_seed(seed)
        model(ids)
        for h in hooks:
            h.remove()
        runs.append(rec)
    a, b = runs
    sites = {
        name: (a[name][1] != b[name][1]).double().mean().item()
        for name in a
        if all(torch.equal(x, y) for x, y in zip(a[name][0], b[name][0])) and not torch.equal(a[name][1], b[name][1])
    }
    return {n: f for n, f in sites.items() if not any(o.startswith(n + ".") for o in sites)}


@pytest.mark.parametrize("kind,rates,expected", [
    ("transformer", {"attn_dropout": 0.5}, "backbone.blocks.0.mixer"),      # SDPA: probabilities
    ("transformer", {"ffn_dropout": 0.5}, "backbone.blocks.0.ffn.drop"),   # the d_ff-wide hidden layer
    ("grassmann", {"ffn_dropout": 0.5}, "backbone.blocks.0.ffn.drop"),
    ("transformer", {"dropout": 0.5}, "backbone.drop"),                    # embedding (first of its sites)
    ("transformer", {}, None),
    ("grassmann", {"attn_dropout": 0.5}, None),                            # no attention: dropped
])
def test_dropout_sites(kind, rates, expected):
    """Each rate drops exactly its own activations: count what two train-mode forwards with
    different seeds change where their inputs agree."""
    opts = {"dropout": 0.0, "attn_dropout": 0.0, "ffn_dropout": 0.0, **rates}
    model = randomize_(small_lm(kind, "paper", 1, **opts), seed=3).train()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(0))
    sites = _noise_sites(model, ids)
    assert set(sites) == ({expected} if expected else set()), sites
    if expected and isinstance(model.get_submodule(expected), torch.nn.Dropout):
        # an element differs where exactly one of the two masks dropped it: 2 p (1 - p) = 0.5
        assert 0.35 < sites[expected] < 0.65, sites


@pytest.mark.parametrize("preset", ("paper", "preln_all_offsets", "preln_per_layer"))
@pytest.mark.parametrize("kind", ("transformer", "grassmann"))
def test_presets_drop_what_their_reproduction_drops(kind, preset):
    """Beyond embedding and branch dropout (off here): no preset drops attention
    probabilities; only alphaXiv's (`preln_all_offsets`) drops the FFN hidden layer."""
    model = randomize_(small_lm(kind, preset, 6, dropout=0.0), seed=3).train()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(0))
    expect = {"backbone.blocks.0.ffn.drop"} if preset == "preln_all_offsets" else set()
    assert set(_noise_sites(model, ids)) == expect
    assert model.cfg.attn_dropout == 0.0


# ------------------------------------------------------------------------ 2. causality

CAUSAL_L = 24
CAUSAL_KS = (0, 1, 5, 12, 23)


def _sensitivity(model, ids, k):
    """(max |change| of logits at positions < k, at position k) when token k changes."""
    ids2 = ids.clone()
    ids2[:, k] = (ids2[:, k] + 1 + torch.arange(ids.shape[0])) % SMALL["vocab_size"]
    with torch.no_grad():
        a, b = model(ids), model(ids2)
    scale = a.abs().max().item()
    before = (a[:, :k] - b[:, :k]).abs().max().item() / scale if k else 0.0
    return before, (a[:, k] - b[:, k]).abs().max().item() / scale


LM_VARIANTS = (
    [("grassmann", p, n, impl) for p in ("paper", "preln_all_offsets", "preln_per_layer")
     for n in (6, 12) for impl in ("naive", "fast")]
    + [("transformer", p, n, None) for p in ("paper", "preln_all_offsets", "preln_per_layer") for n in (6, 12)]
)


@pytest.mark.parametrize("kind,preset,n_layers,impl", LM_VARIANTS)
def test_lm_is_causal(kind, preset, n_layers, impl):
    opts = {} if impl is None else {"mixer_impl": impl}
    model = randomize_(small_lm(kind, preset, n_layers, **opts), seed=2)
    assert not model.training
    ids = torch.randint(0, SMALL["vocab_size"], (2, CAUSAL_L), generator=torch.Generator().manual_seed(0))
    for k in CAUSAL_KS:
        before, at = _sensitivity(model, ids, k)
        assert before < 1e-13, f"token {k} changed earlier logits by {before:.2e} (leak)"
        assert at > 1e-6, f"token {k} did not change its own logits ({at:.2e})"


@pytest.mark.parametrize("impl", ("naive", "fast"))
def test_future_literal_pairing_is_detected_as_non_causal(impl):
    """Sanity check of the causality test: the paper's literal t+Delta pairing leaks."""
    model = randomize_(small_lm("grassmann", "paper", 6, mixer_impl=impl, pairing="future_literal"), seed=2)
    ids = torch.randint(0, SMALL["vocab_size"], (2, CAUSAL_L), generator=torch.Generator().manual_seed(0))
    for k in CAUSAL_KS[1:]:
        before, _ = _sensitivity(model, ids, k)
        assert before > 1e-6, f"future_literal: token {k} did not leak into earlier logits"


# ----------------------------------------------------------------- 3. parameter counts

PAPER_COUNTS = [
    ("transformer", 6, 128, 12_585_472),
    ("transformer", 12, 128, 17_324_032),
    ("transformer", 12, 256, 17_356_800),
    ("grassmann", 6, 128, 13_001_920),
    ("grassmann", 12, 128, 18_156_928),
]
EXTRA_LINEAR = 256 * 256 + 256  # 65,792: the one d x d Linear per layer the counts imply


@pytest.mark.parametrize("kind,n_layers,n_positions,expected", PAPER_COUNTS)
def test_paper_parameter_counts(kind, n_layers, n_positions, expected):
    model = build_model(kind, preset="paper", n_layers=n_layers, n_positions=n_positions)
    assert count_parameters(model) == expected
    assert model.backbone.tok_emb.weight.shape == (30522, 256)


@pytest.mark.parametrize("placement", ("g", "out", "in"))
@pytest.mark.parametrize("n_layers", (6, 12))
def test_extra_projection_is_one_linear_per_layer(n_layers, placement):
    with_extra = count_parameters(
        build_model("grassmann", preset="paper", n_layers=n_layers, n_positions=128, extra_proj=placement)
    )
    without = count_parameters(
        build_model("grassmann", preset="paper", n_layers=n_layers, n_positions=128, extra_proj="none")
    )
    assert with_extra - without == EXTRA_LINEAR * n_layers


@pytest.mark.parametrize("impl", ("naive", "fast"))
@pytest.mark.parametrize("opts", [{}, {"aggregation": "sum", "empty_value": "bias"}], ids=("mean", "sum-bias"))
def test_g_projection_is_the_paper_mixer_with_w_plu_factorised(impl, opts):
    """extra_proj="g" computes the paper's equations with W_plü' = W_g W_plü, b_plü' = W_g b_plü + b_g:
    a model without the extra Linear, given those weights, has the same logits (float64). Under the
    mean, g' = W_g g + b_g where an offset is valid and stays 0 at the empty first position."""
    with_g = randomize_(small_lm("grassmann", "paper", 2, mixer_impl=impl, extra_proj="g", **opts), seed=6)
    plain = small_lm("grassmann", "paper", 2, mixer_impl=impl, extra_proj="none", **opts)
    state = {k: v for k, v in with_g.state_dict().items() if ".g_proj." not in k}
    for i, blk in enumerate(with_g.backbone.blocks):
        Wg, bg, proj = blk.mixer.g_proj.weight, blk.mixer.g_proj.bias, blk.mixer.proj[0]
        state[f"backbone.blocks.{i}.mixer.proj.0.weight"] = Wg @ proj.weight
        state[f"backbone.blocks.{i}.mixer.proj.0.bias"] = Wg @ proj.bias + bg
    plain.load_state_dict(state)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 19), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_rel_close(with_g(ids), plain(ids), "logits")
        if not opts:
            mixer = with_g.backbone.blocks[0].mixer
            z = torch.randn(2, 19, SMALL["reduced_dim"], dtype=DT, generator=torch.Generator().manual_seed(3))
            g = mixer.features(z)
            mixer.g_proj, saved = None, mixer.g_proj
            g_plain = mixer.features(z)
            mixer.g_proj = saved
            assert torch.equal(g[:, 0], torch.zeros_like(g[:, 0]))  # t = 0 has no partner
            assert_rel_close(g[:, 1:], saved(g_plain[:, 1:]), "W_g g + b_g")


def test_paper_preset_projects_g():
    """The paper preset's extra Linear sits on g (technical.md §2.2), not on the blend."""
    mixer = build_model("grassmann", preset="paper", n_layers=6, n_positions=128).backbone.blocks[0].mixer
    assert mixer.cfg.extra_proj == "g"
    assert mixer.g_proj is not None and mixer.out_proj is None and mixer.in_proj is None


def test_count_parameters_counts_tied_head_once():
    model = small_lm("transformer", "paper", 2)
    all_params = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == all_params
    assert model.backbone.tok_emb.weight.numel() == SMALL["vocab_size"] * SMALL["d_model"]
    assert not any(n.startswith("head") for n, _ in model.named_parameters())


def test_count_params_script_json():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # it must find src/ itself
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "count_params.py"), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["model"], r["layers"], r["block_size"]) for r in rows] == [
        ("TransformerLM", 6, 128), ("GrassmannLM", 6, 128),
        ("TransformerLM", 12, 256), ("GrassmannLM", 12, 256),
    ]
    assert [r["params"] for r in rows] == [12_585_472, 13_001_920, 17_324_032, 18_156_928]
    assert [r["paper_m"] for r in rows] == [12.59, 13.00, 17.32, 18.16]
    assert all(r["diff_m"] == 0 for r in rows), rows
    assert [r["params_at_block_size"] for r in rows][2:] == [17_356_800, 18_189_696]


# ---------------------------------------------------- 4. checkpoints cross implementations


@pytest.mark.parametrize("preset,n_layers", [("paper", 6), ("paper", 12), ("preln_all_offsets", 6), ("preln_per_layer", 12)])
def test_naive_checkpoint_loads_into_fast(preset, n_layers):
    naive = randomize_(small_lm("grassmann", preset, n_layers, mixer_impl="naive"), seed=3)
    buf = io.BytesIO()
    torch.save(naive.state_dict(), buf)
    buf.seek(0)
    fast = small_lm("grassmann", preset, n_layers, seed=7, mixer_impl="fast")
    fast.load_state_dict(torch.load(buf, weights_only=True))  # strict: same keys and shapes
    ids = torch.randint(0, SMALL["vocab_size"], (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_rel_close(fast(ids), naive(ids), "logits")


# ------------------------------------------------------------------- 5. SNLI classifiers

CLS = dict(vocab_size=50, d_model=32, d_ff=64, n_heads=4, reduced_dim=6, n_positions=32, n_layers=2)


def small_classifier(kind, seed=0, **options):
    torch.manual_seed(seed)
    opts = {**CLS, **options}
    if kind == "transformer":
        opts.pop("reduced_dim")
    return build_classifier(kind, **opts)


def _pair_batch(seed, B=4, L=16):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, CLS["vocab_size"], (B, L), generator=gen)
    lengths = torch.tensor([L, 11, 6, 3, 9, 14, 5, 8][:B])
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


@pytest.mark.parametrize("pooling", ("mean", "cls"))
@pytest.mark.parametrize("kind", ("transformer", "grassmann"))
def test_classifier_shape_and_padding_invariance(kind, pooling):
    model = randomize_(small_classifier(kind, pooling=pooling), seed=5).to(DT).eval()
    assert not model.cfg.causal
    if kind == "grassmann":
        assert model.cfg.mixer.pairing == "both"
    ids, mask = _pair_batch(0)
    with torch.no_grad():
        logits = model(ids, mask)
        assert logits.shape == (4, 3) and logits.dtype == DT
        assert torch.isfinite(logits).all()
        other = ids.clone()
        pad = mask == 0
        other[pad] = torch.randint(1, CLS["vocab_size"], (int(pad.sum()),), generator=torch.Generator().manual_seed(9))
        assert not torch.equal(other, ids)
        assert (model(other, mask) - logits).abs().max().item() < 1e-12
        # ... and a real token does matter (the check above is not vacuous).
        real = ids.clone()
        real[:, 1] = (real[:, 1] + 1) % CLS["vocab_size"]
        assert (model(real, mask) - logits).abs().max().item() > 1e-6


@pytest.mark.parametrize("kind", ("transformer", "grassmann"))
def test_classifier_trains_on_tiny_batch(kind):
    model = small_classifier(kind)
    model.train()
    ids, mask = _pair_batch(1, B=8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(ids, mask), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        final = F.cross_entropy(model(ids, mask), labels).item()
    assert all(map(lambda x: x == x, losses))
    assert final < 0.5 * losses[0], (losses[0], final)
    assert final < 0.5


# ------------------------------------------------------------------- 6. option validation


@pytest.mark.parametrize("kind,options", [
    ("grassmann", {"not_an_option": 1}),
    ("transformer", {"not_an_option": 1}),
    ("grassmann", {"pairing": "sideways"}),
    ("grassmann", {"norm_form": "bad"}),
    ("grassmann", {"norm_order": "bad"}),
    ("grassmann", {"aggregation": "max"}),
    ("grassmann", {"empty_value": "nan"}),
    ("grassmann", {"projection": "bad"}),
    ("grassmann", {"gate_output": "bad"}),
    ("grassmann", {"extra_proj": "both"}),
    ("grassmann", {"mixer_impl": "cuda"}),
    ("grassmann", {"schedule": "bad"}),
    ("grassmann", {"block": "sandwich"}),
    ("transformer", {"block": "sandwich"}),
    ("grassmann", {"init": "xavier"}),
    ("grassmann", {"schedule": "per_layer", "offsets": (1, 2, 3), "n_layers": 6}),
    ("grassmann", {"offsets": (1, 2, 4, 8, 12, 16), "n_layers": 12}),  # paper N=12 is per_layer
    ("grassmann", {"offsets": (0, 1)}),
    ("grassmann", {"offsets": (-1, 2)}),
    ("grassmann", {"reduced_dim": 1}),
    ("grassmann", {"pairing": "both"}),  # a causal LM must not pair with the future
    ("transformer", {"d_model": 30}),  # not divisible by 4 heads
    ("transformer", {"attn_dropout": 1.0}),
    ("grassmann", {"ffn_dropout": -0.1}),
    ("grassmann", {"dropout": 1.5}),
])
def test_bad_options_raise(kind, options):
    with pytest.raises(ValueError):
        build_model(kind, preset="paper", **{"vocab_size": 11, "d_model": 16, "d_ff": 16, **options})


@pytest.mark.parametrize("call", [
    lambda: build_model("mamba"),
    lambda: build_model("grassmann", preset="nonexistent"),
    lambda: build_model("grassmann", preset="preln_per_layer", n_layers=4),
    lambda: build_classifier("grassmann", pooling="max", **CLS),
    lambda: build_classifier("grassmann", causal=True, pairing="past", **CLS),
])
def test_bad_builds_raise(call):
    with pytest.raises(ValueError):
        call()


def test_good_options_resolve():
    cfg = resolve_config("grassmann", preset="paper", n_layers=12, mixer_impl="naive", norm_eps=1e-5)
    assert cfg.mixer.mixer_impl == "naive" and cfg.mixer.norm_eps == 1e-5
    assert cfg.mixer.schedule == "per_layer" and cfg.mixer.offsets == (1, 1, 2, 2, 4, 4, 8, 8, 12, 12, 16, 16)
    assert cfg.block == "paper_postln" and cfg.mixer.extra_proj == "g"
    assert [cfg.layer_offsets(i) for i in (0, 11)] == [(1,), (16,)]
    # explicit options override the preset
    assert resolve_config("grassmann", preset="paper", block="preln").block == "preln"
    # mixer fields mean nothing to attention and are dropped there
    assert resolve_config("transformer", pairing="future_literal").mixer == MixerConfig()
    # pairing both is fine for the (non-causal) classifier
    assert build_classifier("grassmann", **CLS).cfg.mixer.pairing == "both"
    # a config round-trips through its dict form
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # a Transformer config saved before attn_dropout existed ran attention dropout at `dropout`
    old = {k: v for k, v in resolve_config("transformer", dropout=0.2).to_dict().items() if k != "attn_dropout"}
    assert ModelConfig.from_dict(old).attn_dropout == 0.2
    # a config saved while the mixer's field was still called `impl` reads as `mixer_impl`
    legacy = resolve_config("grassmann", mixer_impl="naive").to_dict()
    legacy["mixer"]["impl"] = legacy["mixer"].pop("mixer_impl")
    assert ModelConfig.from_dict(legacy).mixer.mixer_impl == "naive"


@pytest.mark.parametrize("kind,opt,field,value", [
    ("transformer", "block=postln", "block", "postln"),          # the post-LN Transformer control
    ("grassmann", "extra_proj=none", "extra_proj", "none"),      # the Grassmann without the extra Linear
    ("transformer", "attn_dropout=0.1", "attn_dropout", 0.1),
    ("grassmann", "ffn_dropout=0.2", "ffn_dropout", 0.2),
])
def test_controls_pass_through_opt_into_the_recorded_config(kind, opt, field, value):
    """`--opt KEY=VALUE` as train.py parses it overrides the paper preset, the built model
    follows it, and the config dict saved with the run records it."""
    from grassmann_flows.runs import parse_option

    options = dict([parse_option(opt)], n_layers=2, n_positions=32, vocab_size=50, d_model=16, d_ff=32)
    cfg = resolve_config(kind, "paper", **options)
    recorded = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert getattr(recorded.mixer if field == "extra_proj" else recorded, field) == value
    block = build_model(kind, "paper", **options).backbone.blocks[0]
    if field == "block":
        assert block.layout == "postln"
    elif field == "extra_proj":
        assert (block.mixer.g_proj, block.mixer.out_proj, block.mixer.in_proj) == (None, None, None)
    elif field == "attn_dropout":
        assert block.mixer.dropout == value
    else:
        assert block.ffn.drop.p == value


def test_per_offset_projection_with_fast_warns_and_runs_naive():
    with pytest.warns(UserWarning, match="per_offset"):
        model = small_lm("grassmann", "preln_all_offsets", 6, mixer_impl="fast", projection="per_offset")
    mixers = [b.mixer for b in model.backbone.blocks]
    assert [m.mixer_impl for m in mixers] == ["naive"] * 6
    assert all(len(m.proj) == 6 for m in mixers)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(0))
    logits = model(ids)
    assert logits.shape == (2, 20, SMALL["vocab_size"]) and torch.isfinite(logits).all()
    # No warning for the naive request or a shared projection.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small_lm("grassmann", "preln_all_offsets", 6, mixer_impl="naive", projection="per_offset")
        small_lm("grassmann", "preln_all_offsets", 6, mixer_impl="fast")
