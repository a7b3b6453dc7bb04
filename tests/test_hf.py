"""The transformers integration: export, Auto classes, logits, .generate() and its cache.

Tiny models (d_model 8, n_positions 20) on the CPU. Logits and greedy tokens are compared
exactly: the wrappers run the project's own modules, in the same order, so nothing may
differ, not even rounding.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import grassmann_flows  # noqa: F401  (registers the Auto classes)
from grassmann_flows.data.tokenizers import load_tokenizer
from grassmann_flows.export_hf import main as export_main
from grassmann_flows.generate import generate, main as generate_main
from grassmann_flows.hf.configuration import GrassmannFlowsConfig
from grassmann_flows.hf.modeling import StreamCache
from grassmann_flows.models import build_model
from grassmann_flows.models.mixer import RingState
from grassmann_flows.runs import load_run
from grassmann_flows.utils.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parent.parent
N_POS = 20
KINDS = ("grassmann", "transformer")
TOKENIZER = {"grassmann": "bert-base-uncased", "transformer": "gpt2"}
VOCAB = {"bert-base-uncased": 30522, "gpt2": 50257}

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_lm(kind: str, vocab_size: int = 37, seed: int = 0, **options):
    """An eval-mode LM with noise on every parameter (GPT-2 init zeroes the biases)."""
    torch.manual_seed(seed)
    extra = {"reduced_dim": 4, "offsets": (1, 2, 5)} if kind == "grassmann" else {}
    model = build_model(kind, "paper", n_layers=2, vocab_size=vocab_size, d_model=8, d_ff=12, n_heads=2,
                        n_positions=N_POS, dropout=0.0, **{**extra, **options}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def hf_of(lm):
    """The transformers model holding a copy of `lm`'s weights, built through from_config."""
    hf = AutoModelForCausalLM.from_config(GrassmannFlowsConfig.from_model_config(lm.cfg))
    hf.model.load_state_dict(lm.state_dict())
    return hf.eval()


def prompt(B: int = 2, L: int = 5, vocab_size: int = 37, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=KINDS)
def exported(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(kind, run directory, exported folder) of a tiny WikiText-2 run (BERT or GPT-2 vocabulary)."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"hf_{kind}")
    tokenizer = TOKENIZER[kind]
    model = tiny_lm(kind, VOCAB[tokenizer])
    meta = {"model": model.cfg.to_dict(), "data": {"tokenizer": tokenizer}, "summary": {"task": "wikitext"}}
    save_checkpoint(root / "run" / "best.pt", model, meta)
    assert export_main([str(root / "run"), str(root / "hf")]) == 0
    return kind, root / "run", root / "hf"


# ------------------------------------------------------------------- export and Auto classes

def test_export_folder_loads_through_auto_classes(exported):
    kind, run, folder = exported
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer_config.json"}
    assert json.loads((folder / "config.json").read_text())["model_type"] == f"grassmann_flows_{kind}"
    config = AutoConfig.from_pretrained(folder)
    assert type(config).kind == kind
    model = AutoModelForCausalLM.from_pretrained(folder)
    names = {"grassmann": "GrassmannLMForCausalLM", "transformer": "TransformerLMForCausalLM"}
    assert type(model).__name__ == names[kind]
    own, _, _ = load_run(run, {"task": "wikitext"}, "cpu")
    assert model.model.cfg == own.cfg
    ids = prompt(L=N_POS, vocab_size=own.cfg.vocab_size)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, own(ids))
    # from_pretrained fills no non-persistent buffer from the file: they must be rebuilt exactly
    assert all(torch.equal(a, b) for a, b in zip(model.model.buffers(), own.buffers()))


def test_exported_tokenizer_encodes_as_the_run(exported):
    kind, run, folder = exported
    text = "The tower is 324 metres (1,063 ft) tall, about the same height as an 81-storey building."
    ours = load_tokenizer(TOKENIZER[kind])
    theirs = AutoTokenizer.from_pretrained(folder)
    assert theirs(text, add_special_tokens=False).input_ids == ours(text, add_special_tokens=False).input_ids
    assert theirs.vocab_size == ours.vocab_size


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path):
    hf = hf_of(tiny_lm(kind, extra_proj="g") if kind == "grassmann" else tiny_lm(kind))
    hf.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(back) is type(hf) and back.config.to_model_config() == hf.config.to_model_config()
    assert back.state_dict().keys() == hf.state_dict().keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in hf.state_dict().items())
    ids = prompt(L=9)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, hf(ids).logits)


def test_from_config_initialises_as_the_project():
    """A model built from a config alone gets the project's GPT-2 init, not leftover memory."""
    hf = AutoModelForCausalLM.from_config(GrassmannFlowsConfig.from_model_config(tiny_lm("grassmann").cfg))
    blocks = hf.model.backbone.blocks
    assert torch.equal(blocks[0].mixer.gate.bias, torch.zeros_like(blocks[0].mixer.gate.bias))
    assert torch.equal(hf.model.backbone.norm.weight, torch.ones(8))
    assert 0.005 < hf.model.backbone.tok_emb.weight.std().item() < 0.05


@pytest.mark.parametrize("case", ("missing", "corrupt", "snli_run", "not_empty"))
def test_export_bad_input_is_one_line(exported, tmp_path, capsys, case):
    kind, run, _ = exported
    out = tmp_path / "out"
    if case == "missing":
        run = tmp_path / "nowhere"
    elif case == "corrupt":
        data = (run / "best.pt").read_bytes()
        (tmp_path / "best.pt").write_bytes(data[: len(data) // 2])
        run = tmp_path / "best.pt"
    elif case == "snli_run":
        model = tiny_lm(kind)
        save_checkpoint(tmp_path / "snli" / "best.pt", model,
                        {"model": model.cfg.to_dict(), "summary": {"task": "snli"}})
        run = tmp_path / "snli"
    else:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    capsys.readouterr()
    rc = export_main([str(run), str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert {"missing": "not found", "corrupt": "cannot read checkpoint", "snli_run": "another configuration",
            "not_empty": "not empty"}[case] in err
    assert (not out.exists()) if case != "not_empty" else [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not list(tmp_path.glob(".out.tmp-*"))


# ------------------------------------------------------------------- forward

@pytest.mark.parametrize("kind", KINDS)
def test_labels_give_the_shifted_cross_entropy(kind):
    lm = tiny_lm(kind)
    hf = hf_of(lm)
    ids = prompt(L=9)
    labels = ids.clone()
    labels[0, 4] = -100
    with torch.no_grad():
        out = hf(ids, labels=labels)
        logits = lm(ids)
    keep = labels[:, 1:] != -100
    expected = torch.nn.functional.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])
    assert torch.allclose(out.loss, expected, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_with_a_cache_continues_the_sequence(kind):
    """A manual loop: use_cache=True starts a cache, later calls continue it."""
    hf = hf_of(tiny_lm(kind))
    ids = prompt(L=11)
    with torch.no_grad():
        first = hf(ids[:, :6], use_cache=True)
        steps = [first.logits] + [hf(ids[:, t:t + 1], cache=first.cache).logits for t in range(6, 11)]
        assert first.cache.get_seq_length() == 11
        assert torch.allclose(torch.cat(steps, 1), hf(ids).logits, rtol=1e-5, atol=1e-6)
    assert hf(ids).cache is None  # no cache unless asked for


def test_padding_is_refused_with_reason():
    hf = hf_of(tiny_lm("grassmann"))
    ids = prompt()
    mask = torch.ones_like(ids)
    assert torch.equal(hf(ids, attention_mask=mask).logits, hf(ids).logits)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="padded batches are not supported"):
        hf(ids, attention_mask=mask)


# ------------------------------------------------------------------- generate

@pytest.mark.parametrize("use_cache", (True, False))
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generate_equals_the_project_decoder(kind, use_cache):
    lm = tiny_lm(kind)
    hf = hf_of(lm)
    ids = prompt(L=4)
    ours, hit_limit = generate(lm, ids, 12, temperature=0)
    theirs = hf.generate(ids, max_new_tokens=12, do_sample=False, use_cache=use_cache)
    assert not hit_limit and torch.equal(theirs, ours)


def test_greedy_generate_equals_the_cli(exported, capsys):
    """`python -m grassmann_flows.generate RUN --temperature 0` and .generate() on the export."""
    kind, run, folder = exported
    text = "the tower is"
    capsys.readouterr()
    assert generate_main([str(run), "--prompt", text, "--max-new-tokens", "9", "--temperature", "0"]) == 0
    cli_text = capsys.readouterr().out.strip()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=9, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 9
    assert tok.decode(out[0]) == cli_text


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_repeats_with_a_seed_and_top_k_1_is_greedy(kind):
    hf = hf_of(tiny_lm(kind))
    ids = prompt(L=3)
    runs = []
    for seed in (5, 5):
        torch.manual_seed(seed)
        runs.append(hf.generate(ids, max_new_tokens=7, do_sample=True, temperature=0.9, top_k=5))
    assert runs[0].shape == (2, 10) and torch.equal(runs[0], runs[1]) and torch.equal(runs[0][:, :3], ids)
    greedy = hf.generate(ids, max_new_tokens=7, do_sample=False)
    assert torch.equal(hf.generate(ids, max_new_tokens=7, do_sample=True, top_k=1), greedy)


@pytest.mark.parametrize("kind", KINDS)
def test_beam_search_reorders_the_cache(kind):
    hf = hf_of(tiny_lm(kind))
    ids = prompt(L=3)
    with_cache = hf.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False)
    without = hf.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=False)
    assert with_cache.shape == (2, 9) and torch.equal(with_cache, without)


def _cache_after(hf, n_new: int) -> StreamCache:
    out = hf.generate(prompt(L=3), max_new_tokens=n_new, do_sample=False, return_dict_in_generate=True)
    assert out.sequences.shape[1] == 3 + n_new
    return out.cache


def test_grassmann_cache_is_the_fixed_size_window():
    hf = hf_of(tiny_lm("grassmann"))
    short, long = _cache_after(hf, 2), _cache_after(hf, N_POS - 3)
    assert isinstance(short, StreamCache) and all(isinstance(s, RingState) for s in short.state.layers)
    # every token but the last one generated is fed: 3 + n - 1 positions
    assert (short.get_seq_length(), long.get_seq_length()) == (4, N_POS - 1)
    window = 2 * 2 * max((1, 2, 5)) * 4 * 4  # layers x B x W x r x float32
    assert short.nbytes() == long.nbytes() == window
    assert [s.z.shape for s in short.state.layers] == [s.z.shape for s in long.state.layers]


def test_transformer_cache_is_the_kv_cache():
    hf = hf_of(tiny_lm("transformer"))
    short, long = _cache_after(hf, 2), _cache_after(hf, N_POS - 3)
    per_position = 2 * 2 * 2 * 8 * 4  # layers x (k, v) x B x d x float32
    assert (short.nbytes(), long.nbytes()) == (4 * per_position, (N_POS - 1) * per_position)
    assert short.get_max_length() == 3 + 2 - 1  # sized to the longest sequence fed


@pytest.mark.parametrize("kind", KINDS)
def test_the_position_table_limit_is_a_clear_error(kind):
    hf = hf_of(tiny_lm(kind))
    ids = prompt(L=5)
    full = hf.generate(ids, max_new_tokens=N_POS + 1 - 5, do_sample=False)  # the last token is never fed
    assert full.shape == (2, N_POS + 1)
    with pytest.raises(ValueError, match=r"position table \(n_positions=20\).*max_new_tokens=16"):
        hf.generate(ids, max_new_tokens=N_POS + 2 - 5)
    with pytest.raises(ValueError, match=r"prompt has 21 tokens, more than the model's position table"):
        hf.generate(prompt(L=N_POS + 1), max_new_tokens=1)
    with pytest.raises(ValueError, match=r"exceeds the position table \(n_positions=20\)"):
        hf(prompt(L=N_POS + 1))


def test_future_pairing_cannot_generate():
    hf = hf_of(tiny_lm("grassmann", pairing="future_literal"))
    with pytest.raises(ValueError, match="cannot generate one token at a time"):
        hf.generate(prompt(L=3), max_new_tokens=2)


# ------------------------------------------------------------------- registration

def test_import_registers_both_models_lazily():
    """`import grassmann_flows` imports no transformers; its Auto classes then know both models."""
    code = ("import grassmann_flows, sys\n"
            "print('transformers' in sys.modules)\n"
            "from transformers import AutoConfig\n"
            "from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING as M\n"
            "for t in ('grassmann_flows_grassmann', 'grassmann_flows_transformer'):\n"
            "    c = AutoConfig.for_model(t)\n"
            "    print(t, type(c).__name__, M[type(c)].__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [
        "False",
        "grassmann_flows_grassmann GrassmannLMConfig GrassmannLMForCausalLM",
        "grassmann_flows_transformer TransformerLMConfig TransformerLMForCausalLM",
    ]


def test_install_registers_at_once_when_transformers_is_imported(monkeypatch):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from grassmann_flows.hf import install
    from grassmann_flows.hf.configuration import CONFIG_CLASSES

    monkeypatch.setattr(CONFIG_MAPPING, "_extra_content", {})
    monkeypatch.setattr(MODEL_FOR_CAUSAL_LM_MAPPING, "_extra_content", {})
    install()
    assert set(CONFIG_MAPPING._extra_content) == {"grassmann_flows_grassmann", "grassmann_flows_transformer"}
    assert set(MODEL_FOR_CAUSAL_LM_MAPPING._extra_content) == set(CONFIG_CLASSES.values())


# ------------------------------------------------------------------- decode benchmark

@pytest.mark.parametrize("kind", KINDS)
def test_generate_point_ends_at_the_context_with_the_state_of_the_own_loop(kind):
    from grassmann_flows.hf.bench import generate_point, generate_table

    lm = tiny_lm(kind)
    fed = prompt(B=3, L=N_POS, seed=2)

    def fill(state, n):  # a real prefix, decoded through the state
        lm(fed[:, :n], state=state)

    result = generate_point(lm, B=3, C=12, n_new=4, fill_state=fill, repeats=2)
    own = lm.new_state(3, 12)
    fill(own, 12)
    assert result["state_mb"] == own.nbytes() / 2**20 and result["new_tokens"] == 4
    assert result["ms"] > 0 and result["tokens_per_s"] == 3 / (result["ms"] / 1e3)
    row = {"model": kind, "n_positions": N_POS, "B": 3, "C": 12, "ms": 1.0, "tokens_per_s": 3000.0,
           "state_mb": own.nbytes() / 2**20}
    generated = {"model": kind + " .generate()", "n_positions": N_POS, "B": 3, "C": 12, **result}
    skipped = {"model": kind + " .generate()", "n_positions": N_POS, "B": 32, "C": 12, "skipped": "state too large"}
    table = generate_table([row, generated, {**skipped, "model": kind}, skipped])
    assert f"| {kind} | {N_POS} | 3 | 12 | 1.00 | {result['ms']:.2f} |" in table
    assert f"- {kind} B=32 C=12: state too large" in table
