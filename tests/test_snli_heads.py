"""SNLI heads on a DistilBERT backbone: pairing, Plücker features, training, feature cache.

A tiny randomly initialised DistilBERT stands in for distilbert-base-uncased (whose
weights are not on the build machines); the heads take its width as their input width.
The paper-size heads are only built for the parameter counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import DistilBertConfig, DistilBertModel

from grassmann_flows.data.distilbert_features import (
    CachedFeatureDataset,
    backbone_fingerprint,
    build_feature_cache,
    cached_feature_splits,
)
from grassmann_flows import train_snli
from grassmann_flows.models.lm import count_parameters
from grassmann_flows.ops.wedge_project import pluecker
from grassmann_flows.models.snli_heads import (
    BackboneUnavailableError,
    GrassmannPluckerHead,
    TransformerHead,
    WindowGrassmannMixer,
    build_head,
    build_snli_model,
    load_backbone,
    nli_inputs,
    scale_bands,
    window_pairs,
    window_partners,
)

DIM = 32  # tiny backbone width = the heads' input width in these tests
VOCAB = 100
SMALL_G = dict(d_model=32, reduced_dim=8, d_ff=64)  # windows 8/8, 4 heads, 2 layers as the paper
SMALL_T = dict(d_model=32, d_ff=64)
# The head variants: the Transformer head attending across both sentences ("joint"), the same
# head encoding each sentence alone with the Grassmann head's classifier ("siamese"), and Grassmann.
HEAD_KINDS = ["transformer", "transformer-siamese", "grassmann"]


def small_head(kind: str, **options):
    if kind == "grassmann":
        return build_head("grassmann", in_dim=DIM, **SMALL_G, **options)
    combine = "siamese" if kind.endswith("siamese") else "joint"
    return build_head("transformer", in_dim=DIM, combine=combine, **SMALL_T, **options)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: extra intra-op threads only spin on a busy shared CPU (10-20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_backbone(seed: int = 0) -> DistilBertModel:
    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=VOCAB, dim=DIM, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=64)
    return DistilBertModel(cfg).eval()


def token_arrays(n: int, length: int, encoding: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays shaped like data.snli.tokenize_snli: right-padded ids int32, masks uint8.

    Every premise appears twice, as in SNLI (one premise, several hypotheses).
    """
    rng = np.random.default_rng(seed)

    def sentences(k: int) -> tuple[np.ndarray, np.ndarray]:
        lengths = rng.integers(3, length + 1, size=k)
        mask = (np.arange(length) < lengths[:, None]).astype(np.uint8)
        ids = np.where(mask, rng.integers(5, VOCAB, size=(k, length)), 0).astype(np.int32)
        ids[:, 0] = 1  # a [CLS]-like first token
        return ids, mask

    labels = rng.integers(0, 3, size=n).astype(np.int64)
    if encoding == "pair":
        ids, mask = sentences(n)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    p_ids, p_mask = sentences((n + 1) // 2)
    h_ids, h_mask = sentences(n)
    return {"premise_ids": np.repeat(p_ids, 2, 0)[:n], "premise_mask": np.repeat(p_mask, 2, 0)[:n],
            "hypothesis_ids": h_ids, "hypothesis_mask": h_mask, "labels": labels}


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, dtype=torch.long) for k, v in arrays.items()}


def random_features(B: int, L: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, DIM, generator=g)
    lengths = torch.randint(3, L + 1, (B,), generator=g)
    return x, (torch.arange(L) < lengths[:, None]).long()


# ----------------------------------------------------------------------------- pairing


@pytest.mark.parametrize("length,window,stride", [(48, 8, 8), (13, 8, 8), (20, 8, 4), (5, 8, 8), (16, 4, 1)])
def test_window_pairs_never_pair_a_token_with_itself(length, window, stride):
    pairs = window_pairs(length, window, stride)
    t, s = pairs.unbind(1)
    assert (t != s).all()
    assert ((0 <= pairs) & (pairs < length)).all()
    starts = range(0, length, stride)
    expected = {(a, b) for st in starts for a in range(st, min(st + window, length))
                for b in range(st, min(st + window, length)) if a != b}
    assert set(map(tuple, pairs.tolist())) == expected
    assert len(pairs) == len(expected)  # no pair twice

    partner, valid, _ = window_partners(length, window, stride, 1, torch.device("cpu"))
    pos = torch.arange(length)[:, None].expand_as(partner)
    assert (partner[valid] != pos[valid]).all()
    assert sorted(zip(pos[valid].tolist(), partner[valid].tolist())) == sorted(expected)


def test_paper_windows_pair_within_non_overlapping_blocks_of_eight():
    pairs = window_pairs(48, 8, 8)
    assert len(pairs) == 6 * 8 * 7  # 6 windows, every token with its 7 window mates
    assert (pairs[:, 0] // 8 == pairs[:, 1] // 8).all()
    with pytest.raises(ValueError):
        window_pairs(48, 8, 9)  # tokens between windows would have no partner


def test_mixing_heads_are_distance_bands():
    assert scale_bands(8, 4) == ((1,), (2,), (3, 4), (5, 6, 7))
    assert scale_bands(8, 1) == ((1, 2, 3, 4, 5, 6, 7),)
    partner, valid, head = window_partners(16, 8, 8, 4, torch.device("cpu"))
    dist = (partner - torch.arange(16)[:, None]).abs()
    band = {d: h for h, b in enumerate(scale_bands(8, 4)) for d in b}
    assert all(head[t, k] == band[int(dist[t, k])] for t, k in valid.nonzero().tolist())
    with pytest.raises(ValueError):
        scale_bands(8, 7)  # more heads than distance bands that hold pairs


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize("kind", HEAD_KINDS)
@pytest.mark.parametrize("encoding", ["separate", "pair"])
def test_heads_give_three_logits(kind, encoding):
    if kind == "transformer-siamese" and encoding == "pair":
        with pytest.raises(ValueError, match="separate"):  # one pair sequence has no two sentences
            small_head(kind, encoding=encoding)
        return
    head = small_head(kind, encoding=encoding).eval()
    p, pm = random_features(4, 12, seed=1)
    h, hm = random_features(4, 9, seed=2)  # sentences of different padded lengths
    out = head(p, pm, h, hm) if encoding == "separate" else head(p, pm)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        head(p, pm) if encoding == "separate" else head(p, pm, h, hm)


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_heads_ignore_padded_positions(kind):
    head = small_head(kind).eval()
    p, pm = random_features(3, 16, seed=3)
    h, hm = random_features(3, 16, seed=4)
    ref = head(p, pm, h, hm)
    noisy = [x + 100 * torch.randn_like(x) * (1 - m[..., None]) for x, m in ((p, pm), (h, hm))]
    torch.testing.assert_close(head(noisy[0], pm, noisy[1], hm), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_heads_train_on_a_tiny_batch(kind):
    torch.manual_seed(0)
    head = small_head(kind)
    p, pm = random_features(8, 10, seed=5)
    h, hm = random_features(8, 10, seed=6)
    y = torch.arange(8) % 3
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(head(p, pm, h, hm), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_siamese_transformer_head_encodes_apart_and_shares_the_grassmann_classifier():
    """u and v come from each sentence alone (no attention across them, no segment embedding),
    and the classifier is built exactly as the Grassmann head's: MLP on [u; v; |u-v|; u*v]."""
    torch.manual_seed(0)
    head = small_head("transformer-siamese").double().eval()
    p, pm = random_features(3, 12, seed=1)
    h, hm = random_features(3, 7, seed=2)
    p, h = p.double(), h.double()
    u, v = head.encode(p, pm), head.encode(h, hm)
    expect = head.classifier(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))
    torch.testing.assert_close(head(p, pm, h, hm), expect, rtol=1e-12, atol=1e-12)
    grassmann = small_head("grassmann")
    assert [(type(m), getattr(m, "weight", torch.empty(0)).shape) for m in head.classifier] == [
        (type(m), getattr(m, "weight", torch.empty(0)).shape) for m in grassmann.classifier]
    assert head.embed.seg is None


def test_grassmann_features_equal_explicit_pluecker_projection():
    """The bilinear fast path == project the explicit per-head mean Plücker vectors (float64)."""
    torch.manual_seed(0)
    head = GrassmannPluckerHead(in_dim=DIM, **SMALL_G).double().eval()
    mixer = head.layers[0].mixer
    z = torch.randn(3, 21, 8, dtype=torch.float64)
    mask = (torch.arange(21) < torch.tensor([21, 14, 6])[:, None]).long()
    p_mean = mixer.mean_pluecker(z, mask)  # (N, L, H, P)
    W, b = mixer.proj[0].weight, mixer.proj[0].bias
    H = mixer.n_heads
    nonempty = p_mean.abs().sum(-1, keepdim=True) > 0
    ref = torch.einsum("nlhp,hdp->nlhd", p_mean, W.view(H, -1, W.shape[1])) + b.view(H, -1) * nonempty
    torch.testing.assert_close(mixer.features(z, mask), ref.flatten(-2), rtol=1e-10, atol=1e-10)


def explicit_window_features(mixer: WindowGrassmannMixer, z: torch.Tensor) -> torch.Tensor:
    """Reference for `mixer.features` without padding, pair by pair: the Plücker vector of
    every window pair, normalised (clamp), averaged over its head's distance band,
    projected by the head's rows of W_plü. z: (N, L, r) -> (N, L, d) in z's dtype."""
    N, L, r = z.shape
    H = mixer.n_heads
    W, b = mixer.proj[0].weight.to(z.dtype), mixer.proj[0].bias.to(z.dtype)
    Wh, bh = W.view(H, -1, W.shape[1]), b.view(H, -1)
    head_of = {d: h for h, band in enumerate(scale_bands(mixer.window, H)) for d in band}
    groups: dict[tuple[int, int], list[int]] = {}
    for t, s in window_pairs(L, mixer.window, mixer.stride).tolist():
        groups.setdefault((t, head_of[abs(t - s)]), []).append(s)
    out = torch.zeros(N, L, H, Wh.shape[1], dtype=z.dtype)
    for (t, h), ss in groups.items():
        p = pluecker(z[:, t : t + 1].expand(N, len(ss), r), z[:, ss])  # (N, pairs, P)
        p = p / torch.linalg.vector_norm(p, dim=-1, keepdim=True).clamp_min(mixer.cfg.norm_eps)
        out[:, t, h] = p.mean(1) @ Wh[h].T + bh[h]
    return out.flatten(-2)


def test_grassmann_features_equal_pair_by_pair_reference():
    torch.manual_seed(0)
    mixer = WindowGrassmannMixer(32, 8, window=8, stride=4, n_heads=4, norm_eps=1e-6).double()
    z = torch.randn(2, 19, 8, dtype=torch.float64)
    torch.testing.assert_close(mixer.features(z), explicit_window_features(mixer, z), rtol=1e-10, atol=1e-10)


def test_grassmann_features_float32_near_parallel_pairs():
    """Nearly parallel tokens (sin ~ 1e-3, e.g. a reduction bias dominating W_red h): the
    float32 head is about as accurate as the float32 pair-by-pair path. Lagrange's
    |u|^2|v|^2 - (u.v)^2 loses ~1/sin^2 of the angle here and fails this."""
    r, d, L = 32, 64, 24
    torch.manual_seed(0)
    mixer = WindowGrassmannMixer(d, r, window=8, stride=8, n_heads=4, norm_eps=1e-6).double()
    with torch.no_grad():
        mixer.proj[0].weight.normal_(0, 0.05)
        mixer.proj[0].bias.zero_()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 1, r, dtype=torch.float64, generator=gen) + 1e-3 * torch.randn(
        2, L, r, dtype=torch.float64, generator=gen)
    ref = explicit_window_features(mixer, z)

    def rel32(g: torch.Tensor) -> float:
        return ((g.double() - ref).abs().max() / ref.abs().max()).item()

    naive32 = rel32(explicit_window_features(mixer.float(), z.float()))
    fast32 = rel32(mixer.float().features(z.float()))
    assert naive32 < 1e-3
    assert fast32 < 10 * naive32, f"float32 head {fast32:.1e} vs pair-by-pair {naive32:.1e}"


def test_grassmann_pluecker_features_nonzero_and_order_sensitive():
    torch.manual_seed(0)
    head = GrassmannPluckerHead(in_dim=DIM, **SMALL_G).eval()
    x, _ = random_features(2, 24, seed=7)
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, 19:] = 0
    feats = head.pluecker_features(x, mask)
    assert len(feats) == 2 and feats[0].shape == (2, 24, 4, 8 * 7 // 2)
    for f in feats:
        real = f[mask.bool()]
        assert (real.abs().sum((-1, -2)) > 1e-3).all()  # every real token has a non-zero plane
        assert (f[~mask.bool()] == 0).all()  # padding is never paired

    swapped = x.clone()
    swapped[:, [9, 10]] = x[:, [10, 9]]  # swap two tokens of the second window (8..15)
    feats2 = head.pluecker_features(swapped, mask)
    for f, f2 in zip(feats, feats2):
        assert (f[:, 8:16] - f2[:, 8:16]).abs().max() > 1e-3  # their window sees the new order
    torch.testing.assert_close(feats2[0][:, :8], feats[0][:, :8])  # other windows do not (layer 0)
    torch.testing.assert_close(feats2[0][:, 16:], feats[0][:, 16:])


@pytest.mark.parametrize("encoding,combine", [("separate", "joint"), ("separate", "siamese"), ("pair", "joint")])
def test_paper_size_parameter_counts_match_within_1_percent(encoding, combine):
    n_t = count_parameters(TransformerHead(encoding=encoding, combine=combine))
    n_g = count_parameters(GrassmannPluckerHead(encoding=encoding))
    print(f"\nparameters at 768 input ({encoding}): TransformerHead ({combine}) {n_t:,}  "
          f"GrassmannPluckerHead {n_g:,}  ({100 * (n_t - n_g) / n_g:+.2f}%)")
    assert abs(n_t - n_g) / n_g < 0.01
    mixer = GrassmannPluckerHead().layers[0].mixer
    assert mixer.proj[0].in_features == 2016  # d_proj = 64 -> C(64, 2) Plücker coordinates


# ----------------------------------------------------------------------------- backbone + cache


@pytest.mark.parametrize("encoding", ["separate", "pair"])
def test_cached_features_give_the_uncached_logits(tmp_path, encoding):
    backbone = tiny_backbone()
    arrays = token_arrays(10, 12, encoding)
    model = build_snli_model("grassmann", backbone, encoding=encoding, **SMALL_G).eval()
    ref = model(*nli_inputs(as_tensors(arrays)))

    path = build_feature_cache(backbone, arrays, tmp_path, name="test", progress=False)
    ds = CachedFeatureDataset(path)
    assert len(ds) == 10 and ds.encoding == encoding
    if encoding == "separate":
        assert ds.meta["n_sentences"] == 5 + 10  # each premise once, each hypothesis once
    cached = model.head(*nli_inputs(ds[list(range(10))]))
    torch.testing.assert_close(cached, ref, rtol=1e-3, atol=2e-3)  # float16 storage

    item = ds[3]
    assert item["premise"].shape == (12, DIM) and item["premise"].dtype == torch.float16
    batches = [ds[idx.tolist()] for idx in torch.randperm(10, generator=torch.Generator().manual_seed(0)).split(4)]
    assert sorted(torch.cat([b["labels"] for b in batches]).tolist()) == sorted(arrays["labels"].tolist())

    stamp = (path / "meta.json").stat().st_mtime_ns
    assert build_feature_cache(backbone, arrays, tmp_path, name="test", progress=False) == path
    assert (path / "meta.json").stat().st_mtime_ns == stamp  # found, not rebuilt
    other = tiny_backbone(seed=1)  # different weights -> a different cache
    splits = cached_feature_splits(other, {"validation": arrays}, tmp_path, progress=False)
    assert splits["validation"].path != path


def test_frozen_backbone_gets_no_gradient_and_stays_in_eval():
    arrays = as_tensors(token_arrays(4, 10, "separate"))
    y = arrays["labels"]
    frozen = build_snli_model("transformer", tiny_backbone(), **SMALL_T).train()
    assert not frozen.backbone.training and frozen.head.training
    F.cross_entropy(frozen(*nli_inputs(arrays)), y).backward()
    assert all(p.grad is None for p in frozen.backbone.parameters())

    tuned = build_snli_model("transformer", tiny_backbone(), finetune_backbone=True, **SMALL_T).train()
    assert tuned.backbone.training
    F.cross_entropy(tuned(*nli_inputs(arrays)), y).backward()
    assert tuned.backbone.transformer.layer[0].attention.q_lin.weight.grad is not None


def test_load_backbone_reports_missing_weights_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for where in (tmp_path / "no-such-dir", tmp_path):  # missing dir; dir without config/weights
        with pytest.raises(BackboneUnavailableError) as err:
            load_backbone(str(where))
        msg = str(err.value)
        assert "\n" not in msg
        assert "--backbone" in msg and "huggingface-cli download distilbert-base-uncased" in msg


def test_load_backbone_from_a_local_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = tiny_backbone()
    backbone.save_pretrained(tmp_path / "distilbert")
    loaded = load_backbone(str(tmp_path / "distilbert"))
    assert backbone_fingerprint(loaded) == backbone_fingerprint(backbone)


# ----------------------------------------------------------------------------- train_snli --mode distilbert

FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    """A tiny DistilBERT over the bert-base-uncased vocabulary, saved as a local directory."""
    path = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=30522, dim=DIM, n_layers=1, n_heads=2, hidden_dim=64,
                           max_position_embeddings=64)
    DistilBertModel(cfg).save_pretrained(path)
    return path


def test_distilbert_run_records_its_head_not_the_lm_settings(tmp_path, backbone_dir):
    """results.json: the head's 2 layers, no preset, the Transformer head's layout; config.json
    keeps the layout so eval_snli rebuilds the same head."""
    out = tmp_path / "run"
    args = ["--mode", "distilbert", "--model", "transformer", "--transformer-head", "siamese",
            "--backbone", str(backbone_dir), "--data-dir", str(FIXTURE_DATA), "--cache-dir", str(tmp_path / "cache"),
            "--out-dir", str(out), "--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "2",
            "--eval-max-batches", "1", "--device", "cpu"]
    assert train_snli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["n_layers"], results["preset"], results["transformer_head"]) == (2, None, "siamese")
    assert results["params"] == count_parameters(TransformerHead(in_dim=DIM, combine="siamese"))
    config = json.loads((out / "config.json").read_text())
    assert config["distilbert"]["combine"] == "siamese"


def test_distilbert_features_are_computed_on_the_ranks_own_device(tmp_path, backbone_dir, monkeypatch):
    """Under torchrun the process group is joined (which gives each rank cuda:LOCAL_RANK)
    before the backbone computes the feature cache; before, every rank computed on cuda:0.
    `distributed.init` returning cpu:0 stands in for the rank's own GPU here."""
    events = []
    real_setup = train_snli.distilbert_setup

    def init(device):
        events.append("init")
        return torch.device("cpu", 0)

    def setup(head, splits, cache_dir, device):
        events.append(("setup", device))
        return real_setup(head, splits, cache_dir, device)

    monkeypatch.setattr(train_snli.distributed, "init", init)
    monkeypatch.setattr(train_snli, "distilbert_setup", setup)
    args = ["--mode", "distilbert", "--model", "grassmann", "--backbone", str(backbone_dir), "--data-dir",
            str(FIXTURE_DATA), "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "run"),
            "--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "1", "--eval-max-batches", "1",
            "--device", "cpu"]
    assert train_snli.main(args) == 0
    assert events[:2] == ["init", ("setup", torch.device("cpu", 0))]


@pytest.mark.parametrize("extra", [["--mode", "distilbert", "--model", "grassmann"], ["--model", "transformer"]])
def test_transformer_head_flag_outside_the_distilbert_transformer_is_refused(tmp_path, capsys, extra):
    args = [*extra, "--transformer-head", "siamese", "--data-dir", str(FIXTURE_DATA),
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "run")]
    assert train_snli.main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--transformer-head" in err[0], err


def test_compiled_grassmann_head_serves_every_batch_width_with_one_graph():
    """Cached-feature batches are padded to their longest sentence, so every batch width
    occurs. Under torch.compile the window computation must not specialise on it: past a
    first static graph, one dynamic graph serves every width, within a recompile limit of 2
    (before, each width compiled anew, and past the limit of 8 the head ran uncompiled)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    head = small_head("grassmann").eval()
    counter = CompileCounterWithBackend("inductor")  # inductor's lowering too, as on a GPU
    compiled = torch.compile(head, backend=counter, fullgraph=True)
    limit = ("recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit")
    with torch._dynamo.config.patch({limit: 2, "fail_on_recompile_limit_hit": True}), torch.no_grad():
        for L in range(5, 11):
            p, pm = random_features(2, L, seed=L)
            h, hm = random_features(2, L + 1, seed=L + 100)
            assert torch.allclose(compiled(p, pm, h, hm), head(p, pm, h, hm), atol=1e-5)
    assert counter.frame_count <= 2
    torch._dynamo.reset()
