"""Incremental decoding: the streaming state reproduces the full forward in float64.

Transformer (KV cache) and Grassmann (a fixed window of the last max|offset| reduced
vectors per layer), every preset, the mixer options, every prefix length up to
n_positions; state sizes; sampling; the position-table limit; the CLI's errors; the
decode benchmark's smoke run. Tiny widths and n_positions = 20 keep it fast.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grassmann_flows.generate import generate, incremental_logits, main, sample_next
from grassmann_flows.models import MixerConfig, build_model
from grassmann_flows.models.attention import SelfAttention
from grassmann_flows.models.config import _CHOICES
from grassmann_flows.utils.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parent.parent
DT = torch.float64
REL_TOL = 1e-10
N_POS = 20
TINY = dict(vocab_size=23, d_model=8, d_ff=12, n_heads=2, n_positions=N_POS, dropout=0.0)

pytestmark = pytest.mark.usefixtures("single_thread")


def assert_rel_close(a: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert a.shape == ref.shape, (what, a.shape, ref.shape)
    assert torch.isfinite(a).all() and torch.isfinite(ref).all(), what
    err = (a - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)
    assert err < REL_TOL, f"{what}: relative error {err:.3e} >= {REL_TOL:.0e}"


def tiny_lm(kind: str, preset: str = "paper", n_layers: int = 2, seed: int = 0, **options):
    """A float64 eval-mode LM with noise on every parameter: GPT-2 init zeroes the biases,
    which would hide bias-placement differences (empty_value, sum vs mean)."""
    torch.manual_seed(seed)
    opts = {**TINY, **({} if kind == "transformer" else {"reduced_dim": 4}), **options}
    model = build_model(kind, preset, n_layers=n_layers, **opts).to(DT).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def token_ids(B: int = 2, L: int = N_POS, seed: int = 0, repeat: bool = True) -> torch.Tensor:
    """Random ids; with `repeat` one row repeats a token, so partners are parallel (|p| = 0)."""
    ids = torch.randint(0, TINY["vocab_size"], (B, L), generator=torch.Generator().manual_seed(seed))
    if repeat:
        ids[-1, L // 2:] = ids[-1, L // 2]
    return ids


def check_model(model, ids: torch.Tensor, every_length: bool = False) -> None:
    """One incremental pass against model(ids) at every position and against the full
    forward of a few prefixes; with every_length, of every prefix, plus fresh passes."""
    inc = incremental_logits(model, ids)
    with torch.no_grad():
        assert_rel_close(inc, model(ids), "all positions")
        for L in range(1, ids.shape[1] + 1) if every_length else (1, 7):
            assert_rel_close(inc[:, :L], model(ids[:, :L]), f"prefix {L}")
        for L in (1, 2, 17) if every_length else ():
            assert_rel_close(incremental_logits(model, ids[:, :L]), model(ids[:, :L]), f"fresh pass of {L}")


# ------------------------------------------------------------------- presets, every length

PRESET_CASES = [("transformer", "paper", 2)] + [
    ("grassmann", preset, n) for preset in ("paper", "preln_all_offsets", "preln_per_layer") for n in (6, 12)
]


@pytest.mark.parametrize("kind,preset,n_layers", PRESET_CASES)
def test_incremental_matches_full_forward_every_preset_and_length(kind, preset, n_layers):
    model = tiny_lm(kind, preset, n_layers)
    check_model(model, token_ids(), every_length=True)


# ------------------------------------------------------------------- mixer options

# The streaming step changes only the features' input (a window and its mask); the gate,
# blend, projections, norms and block layout run the full forward's code. So the options
# of the feature path are crossed with each other, those after it with each other, and
# each case of one group takes a different case of the other. Values come from the
# config's own choice table, so an option value added there is covered here.
BOOLS = (True, False)
FEATURE_OPTIONS = ("normalize", "norm_order", "aggregation", "empty_value", "norm_form", "projection", "schedule")
LAYOUT_OPTIONS = ("block", "gate_output", "extra_proj", "mixer_norm")


def _grid(names: tuple[str, ...]) -> list[dict]:
    values = [_CHOICES.get(n, BOOLS) for n in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


FEATURE_GRID, LAYOUT_GRID = _grid(FEATURE_OPTIONS), _grid(LAYOUT_OPTIONS)
# One layer. "all": a duplicate (counts twice in a sum) and an offset beyond n_positions
# (never valid), a window of 25; "per_layer": the layer's one offset, a window of 5.
OFFSETS = {"all": (1, 3, 3, 25), "per_layer": (5,)}
OPTION_CASES = [
    {**f, **LAYOUT_GRID[i % len(LAYOUT_GRID)], "mixer_impl": ("fast", "naive")[i % 2]}
    for i, f in enumerate(FEATURE_GRID)
] + [
    {**FEATURE_GRID[(7 * i) % len(FEATURE_GRID)], **lay, "mixer_impl": ("fast", "naive")[i % 2]}
    for i, lay in enumerate(LAYOUT_GRID)
]
for case in OPTION_CASES:  # per-offset projections have no collapsed form: naive (without the warning)
    if case["projection"] == "per_offset":
        case["mixer_impl"] = "naive"


@pytest.mark.parametrize("options", OPTION_CASES, ids=lambda o: "-".join(f"{v}" for v in o.values()))
def test_incremental_matches_full_forward_every_option(options):
    options = {**options, "offsets": OFFSETS[options["schedule"]]}
    model = tiny_lm("grassmann", "paper", 1, seed=len(str(options)), **options)
    check_model(model, token_ids(seed=1))


def test_fused_mixer_streams():
    pytest.importorskip("triton", reason="the fused mixer needs Triton (the interpreter on CPU)")
    model = tiny_lm("grassmann", "paper", 2, mixer_impl="fused")
    assert {b.mixer.mixer_impl for b in model.backbone.blocks} == {"fused"}
    ids = token_ids(L=12)
    assert_rel_close(incremental_logits(model, ids), model(ids), "fused")


@pytest.mark.parametrize("pairing", ("future_literal", "both"))
def test_future_pairing_is_refused_with_reason(pairing):
    if pairing == "future_literal":
        model = tiny_lm("grassmann", "paper", 2, pairing="future_literal")
        with pytest.raises(ValueError, match="future positions"):
            incremental_logits(model, token_ids(L=3))
    else:  # a causal LM cannot be built with "both"; its mixer refuses a state
        from grassmann_flows.models.mixer import GrassmannMixer

        mixer = GrassmannMixer(8, MixerConfig(reduced_dim=4, pairing="both"), (1, 2, -1, -2))
        with pytest.raises(ValueError, match="cannot generate one token at a time"):
            mixer.new_state(1, N_POS, torch.device("cpu"), DT)


# ------------------------------------------------------------------- states

def _state_after(model, n: int):
    state = model.new_state(2)
    with torch.no_grad():
        model(token_ids(L=n), state=state)
    return state


def test_grassmann_state_has_constant_size():
    model = tiny_lm("grassmann", "preln_all_offsets", 2, offsets=(1, 2, 4, 8, 12, 16))
    early, late = _state_after(model, 5), _state_after(model, N_POS - 1)
    assert (early.position, late.position) == (5, N_POS - 1)
    assert [s.z.shape for s in early.layers] == [s.z.shape for s in late.layers] == [(2, 16, 4)] * 2
    assert early.nbytes() == late.nbytes() == 2 * 2 * 16 * 4 * 8


def test_kv_cache_grows_with_context():
    model = tiny_lm("transformer")
    early, late = _state_after(model, 5), _state_after(model, N_POS - 1)
    per_position = 2 * 2 * TINY["d_model"] * 8 * 2  # layers x (k, v) x B x d x float64
    assert (early.nbytes(), late.nbytes()) == (5 * per_position, (N_POS - 1) * per_position)


def test_kv_cache_reproduces_full_attention():
    torch.manual_seed(0)
    attn = SelfAttention(8, 2, dropout=0.0, causal=True).to(DT).eval()
    x = torch.randn(3, 17, 8, dtype=DT)
    cache = attn.new_state(3, 17, x.device, DT)
    chunks, start = [], 0
    for size in (1, 4, 1, 1, 7, 3):  # single queries and multi-token chunks (offset causal mask)
        chunks.append(attn(x[:, start:start + size], state=cache))
        start += size
    with torch.no_grad():
        assert_rel_close(torch.cat(chunks, 1), attn(x), "KV cache vs full attention")
    assert cache.length == 17
    with pytest.raises(ValueError, match="KV cache full"):
        attn(x[:, :1], state=cache)


@pytest.mark.parametrize("kind,preset", [("transformer", "paper"), ("grassmann", "paper"),
                                         ("grassmann", "preln_per_layer")])
def test_chunked_prefill_matches_full_forward(kind, preset):
    """A prompt in one call, then chunks shorter and longer than the Grassmann window."""
    model = tiny_lm(kind, preset, 6)
    ids = token_ids()
    state = model.new_state(2)
    with torch.no_grad():
        out = [model(ids[:, a:b], state=state) for a, b in ((0, 3), (3, 4), (4, 20))]
        assert_rel_close(torch.cat(out, 1), model(ids), "chunked")


# ------------------------------------------------------------------- sampling and limits

def test_sampling_with_fixed_seed_repeats():
    model = tiny_lm("grassmann", "paper", 2)
    prompt = token_ids(L=3)
    runs = [generate(model, prompt, 10, temperature=0.9, top_k=5,
                     generator=torch.Generator().manual_seed(s))[0] for s in (7, 7, 8)]
    assert runs[0].shape == (2, 13)
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, :3], prompt)


@pytest.mark.parametrize("kind", ("transformer", "grassmann"))
def test_greedy_matches_full_forward_argmax(kind):
    model = tiny_lm(kind, "paper", 2)
    ids, hit_limit = generate(model, token_ids(L=4), 8, temperature=0)
    assert not hit_limit
    with torch.no_grad():
        for t in range(4, 12):
            assert torch.equal(ids[:, t], model(ids[:, :t])[:, -1].argmax(-1))


def test_top_k_only_samples_the_k_best():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]]).expand(200, 4)
    drawn = sample_next(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {1, 2}


def test_generation_stops_at_the_position_table():
    model = tiny_lm("grassmann", "paper", 2)
    ids, hit_limit = generate(model, token_ids(L=15), 100, temperature=0)
    assert hit_limit and ids.shape == (2, N_POS + 1)  # the last token is predicted, never fed
    with pytest.raises(ValueError, match="position table"):
        generate(model, token_ids(L=N_POS + 1, repeat=False), 1)
    state = model.new_state(1)
    with pytest.raises(ValueError, match=r"exceeds the position table \(n_positions=20\)"):
        model(token_ids(B=1, L=N_POS + 1, repeat=False), state=state)


# ------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A WikiText-2 run directory with a tiny Grassmann model over the BERT vocabulary."""
    path = tmp_path_factory.mktemp("run")
    model = build_model("grassmann", "paper", n_layers=2, vocab_size=30522, d_model=8, d_ff=8,
                        n_heads=2, reduced_dim=4, n_positions=12)
    meta = {"model": model.cfg.to_dict(), "data": {"tokenizer": "bert-base-uncased"},
            "summary": {"task": "wikitext"}}
    save_checkpoint(path / "best.pt", model, meta)
    return path


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_generates_and_repeats_with_seed(run_dir, capsys):
    first = _cli(capsys, str(run_dir), "--prompt", "the tower is", "--max-new-tokens", "5", "--seed", "3")
    second = _cli(capsys, str(run_dir), "--prompt", "the tower is", "--max-new-tokens", "5", "--seed", "3")
    assert first[0] == 0 and first == second
    assert first[1].startswith("the tower is")


def test_cli_says_when_the_position_table_is_full(run_dir, capsys):
    rc, out, err = _cli(capsys, str(run_dir), "--prompt", "a b c d e f g h i j", "--max-new-tokens", "9")
    assert rc == 0 and "n_positions=12" in err and "stopped after 3 new tokens" in err


@pytest.mark.parametrize("case", ("missing", "corrupt", "empty_prompt", "long_prompt"))
def test_cli_bad_input_is_one_line(run_dir, tmp_path, capsys, case):
    run, prompt = str(run_dir), "the tower"
    if case == "missing":
        run = str(tmp_path / "nowhere")
    elif case == "corrupt":
        data = (run_dir / "best.pt").read_bytes()
        (tmp_path / "best.pt").write_bytes(data[: len(data) // 2])  # a torn copy
        run = str(tmp_path)
    elif case == "empty_prompt":
        prompt = "  "
    else:
        prompt = " ".join(["word"] * 13)
    rc, out, err = _cli(capsys, run, "--prompt", prompt)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    expected = {"missing": "not found", "corrupt": "cannot read checkpoint", "empty_prompt": "prompt is empty",
                "long_prompt": "position table"}[case]
    assert expected in err


# ------------------------------------------------------------------- benchmark

def test_decode_benchmark_quick_cpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--only", "decode", "--quick",
         "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = sorted(tmp_path.glob("*-decode.json"))
    assert len(files) == 1, list(tmp_path.iterdir())
    assert files[0].with_suffix(".png").exists()
    result = json.loads(files[0].read_text())
    rows = [r for r in result["decode"] if "ms" in r]
    models = [m + way for way in ("", " .generate()") for m in ("transformer", "grassmann")]
    assert {(r["model"], r["B"]) for r in rows} == {(m, b) for m in models for b in (1, 32)}
    for model in models:
        sizes = [r["state_mb"] for r in sorted(rows, key=lambda r: r["C"]) if r["model"] == model and r["B"] == 1]
        assert len(sizes) >= 2
        assert (sizes[0] < sizes[-1]) if model.startswith("transformer") else (sizes[0] == sizes[-1])
    assert "Grassmann / Transformer" in proc.stdout
    assert "The project's loop and transformers' .generate()" in proc.stdout
