"""The run spec: one reading of a training command's flags for train, train_snli, the grid and the benchmark."""

from __future__ import annotations

from dataclasses import replace

import pytest

from grassmann_flows import grid, train, train_snli
from grassmann_flows.bench.model import QUICK_MODEL_OPTIONS, QUICK_VOCAB, train_spec
from grassmann_flows.grid.preflight import run_spec
from grassmann_flows.spec import DISTILBERT_SENT_LEN, SNLI_DEFAULTS, spec_from_args


def lm(*argv: str):
    return spec_from_args("wikitext", train.parser().parse_args(["--model", "grassmann", *argv]))


def snli(*argv: str):
    return spec_from_args("snli", train_snli.parser().parse_args(list(argv)))


@pytest.mark.parametrize("L,batch", [(128, 32), (256, 16), (100, 40)])
def test_lm_batch_size_is_the_papers_token_budget_unless_given(L: int, batch: int) -> None:
    spec = lm("--seq-len", str(L))
    assert spec.train.batch_size == batch and spec.seq_len == L
    assert lm("--seq-len", str(L), "--batch-size", "3").train.batch_size == 3


def test_lm_options_positions_and_mixer_impl() -> None:
    spec = lm("--seq-len", "64", "--n-layers", "2", "--mixer-impl", "naive", "--opt", "normalize=false")
    assert spec.options == {"normalize": False, "mixer_impl": "naive", "n_layers": 2, "n_positions": 64}
    assert lm("--seq-len", "64", "--n-positions", "128").options["n_positions"] == 128
    cfg = spec.model_config()
    assert cfg.n_layers == 2 and cfg.n_positions == 64 and cfg.mixer.mixer_impl == "naive"
    assert cfg.vocab_size == 30522  # the tokenizer's (bert-base-uncased)
    assert spec.name == "grassmann_wikitext_L64_N2_paper_lr6e-4_s0"


def test_snli_defaults_fill_only_what_was_not_given() -> None:
    spec = snli("--model", "transformer", "--lr", "1e-3")
    assert (spec.train.epochs, spec.train.batch_size, spec.train.lr) == (SNLI_DEFAULTS["epochs"],
                                                                      SNLI_DEFAULTS["batch_size"], 1e-3)
    assert spec.data.encoding == "pair" and spec.seq_len == spec.data.max_len == spec.options["n_positions"]
    cfg = snli("--model", "grassmann", "--n-layers", "2").model_config()
    assert not cfg.causal and cfg.mixer.pairing == "both"  # a bidirectional encoder


def test_distilbert_heads() -> None:
    spec = snli("--mode", "distilbert", "--model", "transformer", "--transformer-head", "siamese")
    assert spec.head == {"head": "transformer", "backbone": "distilbert-base-uncased", "finetune_backbone": False,
                         "encoding": "separate", "combine": "siamese"}
    assert (spec.data.sent_len, spec.data.max_len, spec.seq_len) == (DISTILBERT_SENT_LEN, 2 * DISTILBERT_SENT_LEN,
                                                                      DISTILBERT_SENT_LEN)
    assert spec.name == "transformer_snli_distilbert_siamese_lr3e-4_s0"
    assert snli("--mode", "distilbert", "--model", "grassmann").name == "grassmann_snli_distilbert_lr3e-4_s0"
    assert snli("--mode", "distilbert", "--model", "grassmann", "--encoding", "pair").data.encoding == "pair"
    with pytest.raises(ValueError, match="built by models/snli_heads.py"):
        spec.model_config()


@pytest.mark.parametrize("argv,message", [
    (("--mode", "distilbert", "--model", "grassmann", "--opt", "normalize=false"), "--opt and --mixer-impl"),
    (("--mode", "distilbert", "--model", "grassmann", "--transformer-head", "joint"), "always siamese"),
    (("--model", "grassmann", "--transformer-head", "joint"), "--mode distilbert"),
    (("--model", "grassmann", "--opt", "normalize"), "key=value"),
])
def test_contradicting_flags_are_one_error(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        snli(*argv)


@pytest.mark.parametrize("datasets", [("wikitext",), ("snli",)])
@pytest.mark.parametrize("snli_mode", ["scratch", "distilbert"])
def test_every_grid_run_reads_as_the_run_it_names(datasets: tuple[str, ...], snli_mode: str) -> None:
    """The grid names a run; its command, read by the spec, trains the run of that name."""
    runs = grid.Planner(grid.Knobs.from_env({"SNLI_MODE": snli_mode})).speedrun(["transformer", "grassmann"],
                                                                                list(datasets))
    assert runs
    for run in runs:
        spec = run_spec(run)
        assert spec.name == run.name
        assert {k: getattr(spec, k, None) for k in ("model", "preset") if k in run.expect} == \
               {k: run.expect[k] for k in ("model", "preset") if k in run.expect}


def test_a_bad_grid_flag_is_a_preflight_error() -> None:
    run = grid.Planner(grid.Knobs.from_env({"EXTRA_ARGS": "--opt normalize"})).speedrun(["grassmann"], ["wikitext"])[0]
    with pytest.raises(grid.PreflightError, match=f"{run.name}: --opt expects key=value"):
        run_spec(run)


def test_the_benchmark_times_the_model_train_builds() -> None:
    spec = train_spec("grassmann", "naive", 32, 2, 2, QUICK_MODEL_OPTIONS)
    argv = ["--seq-len", "32", "--n-layers", "2", "--batch-size", "2", "--mixer-impl", "naive",
            *[x for k, v in QUICK_MODEL_OPTIONS.items() for x in ("--opt", f"{k}={v}")]]
    trained = lm(*argv).model_config()
    assert spec.model_config() == replace(trained, vocab_size=QUICK_VOCAB)
    assert train_spec("transformer", None, 128, 6, 32, {}).model_config() == \
        spec_from_args("wikitext", train.parser().parse_args(["--model", "transformer"])).model_config()
