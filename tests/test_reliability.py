"""Reliability and scale-out: DDP, interruption and resume, divergence, hostile inputs.

Tiny models on the fixture data, on the CPU (DDP over gloo). Runs that must be real
processes (torchrun, signals, SIGKILL) are subprocesses; the rest call the CLI entry
points in-process, which is the same `cli`-wrapped `main` the console runs.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from grassmann_flows import eval_wikitext, train, train_snli
from grassmann_flows.utils import distributed
from grassmann_flows.utils.checkpoint import CheckpointError, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "fixtures" / "data"
TINY = ["--preset", "paper", "--opt", "d_model=32", "--opt", "d_ff=64", "--opt", "n_heads=2", "--n-layers", "1",
        "--data-dir", str(DATA), "--batch-size", "4", "--warmup-steps", "1", "--lr", "1e-3", "--eval-max-batches", "2"]
# One thread per process: deterministic, and gentle on a shared 2-core machine.
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenised-split cache shared by the module's runs (tokenising once)."""
    return tmp_path_factory.mktemp("cache")


def lm_args(out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--model", "transformer", *TINY, "--seq-len", "16", "--cache-dir", str(cache), "--out-dir", str(out),
            *extra]


def run_module(module: str, args: list[str], launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *launcher, module, *args], env=ENV, capture_output=True,
                          text=True, timeout=300)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run directory, to show that a refused command changed nothing."""
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A finished 1-epoch run (in-process): last.pt, best.pt, results.json, ..."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert train.main(lm_args(out, cache, "--epochs", "1", "--max-steps-per-epoch", "3")) == 0
    return out


@pytest.fixture()
def run_copy(base_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


# --- multi-GPU (DDP over gloo on the CPU) -----------------------------------------------

def test_ddp_two_processes_match_one(tmp_path: Path, cache: Path) -> None:
    """2 ranks x 2 items = the single process's batch of 4: same losses, same weights.

    dropout=0, so the per-rank dropout streams play no part. Tolerance: both compute the
    same float32 sums in a different order (two half-batch means averaged by DDP vs one
    mean); after 3 AdamW steps at lr 1e-3 the weights differ by ~1e-6 (measured), while
    training on half of each batch instead lands ~5e-3 away. We allow 1e-5 on the weights
    and 1e-4 on the logged losses.
    """
    common = ["--opt", "dropout=0", "--epochs", "1", "--max-steps-per-epoch", "3", "--log-every", "1"]
    single = run_module("grassmann_flows.train", lm_args(tmp_path / "single", cache, *common))
    assert single.returncode == 0, single.stderr
    ddp = run_module("grassmann_flows.train", lm_args(tmp_path / "ddp", cache, *common),
                     launcher=("torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    a, b = weights(tmp_path / "single" / "last.pt"), weights(tmp_path / "ddp" / "last.pt")
    assert a.keys() == b.keys()  # unwrapped: no "module." prefix
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-5, f"DDP weights differ from the single process by {diff}"

    def losses(run: Path) -> list[float]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "step"]

    # The logged loss is the global batch's: the same as the single process's, step by step.
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), abs=1e-4)
    assert len(losses(tmp_path / "ddp")) == 3  # rank 0 alone writes metrics.jsonl
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2 and results["status"] == "completed"
    assert len(load_checkpoint(tmp_path / "ddp" / "last.pt")["rng"]) == 2  # one RNG state per rank


def test_global_batch_must_divide_among_ranks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    assert train.main(lm_args(tmp_path / "run", cache, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "--batch-size 4 is the global batch; it must be divisible by the 3 processes" in err


# --- interruption -----------------------------------------------------------------------

def test_sigterm_then_resume_equals_uninterrupted(tmp_path: Path, cache: Path) -> None:
    """SIGTERM mid-run: exit 130, last.pt saved; --resume ends bit-identical to a run
    that was never stopped (dropout on, so the RNG state is part of what is resumed)."""
    args = ("--epochs", "2", "--max-steps-per-epoch", "30", "--log-every", "1")
    full = run_module("grassmann_flows.train", lm_args(tmp_path / "full", cache, *args))
    assert full.returncode == 0, full.stderr

    run = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "grassmann_flows.train", *lm_args(run, cache, *args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:  # type: ignore[union-attr]
        output.append(line)
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    output += proc.stdout.read().splitlines(keepends=True)  # type: ignore[union-attr]
    assert proc.wait(timeout=120) == 130, "".join(output)
    assert any(l.startswith("stopped: received SIGTERM; saved") for l in output), "".join(output)
    stopped_at = load_checkpoint(run / "last.pt")["meta"]["state"]["global_step"]
    assert 3 <= stopped_at < 60  # mid-run
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "interrupted" and results["stop_reason"] == "received SIGTERM"

    resumed = run_module("grassmann_flows.train", lm_args(run, cache, *args, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run / 'last.pt'}" in resumed.stdout
    a, b = weights(tmp_path / "full" / "last.pt"), weights(run / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigint_stops_cleanly_in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    """Ctrl-C (SIGINT) during step 2: the step finishes, last.pt is saved, exit 130."""
    real_loss, calls = train.LMTask.loss, []

    def loss(self: Any, model: Any, batch: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(self, model, batch)

    monkeypatch.setattr(train.LMTask, "loss", loss)
    out = tmp_path / "run"
    assert train.main(lm_args(out, cache, "--epochs", "1", "--max-steps-per-epoch", "10", "--log-every", "5")) == 130
    assert f"stopped: received SIGINT; saved {out / 'last.pt'} (continue with --resume)" in capsys.readouterr().out
    assert load_checkpoint(out / "last.pt")["meta"]["state"]["global_step"] == 2


def test_sigkill_during_checkpoint_write_keeps_previous(tmp_path: Path) -> None:
    """A process killed while writing last.pt leaves the previous last.pt intact: the
    write goes to a hidden temp file that is renamed over last.pt only once complete."""
    ckpt = tmp_path / "last.pt"
    child = subprocess.Popen([sys.executable, "-c", f"""
import itertools, torch
from grassmann_flows.utils.checkpoint import save_checkpoint
model = torch.nn.Linear(2048, 2048)  # ~16 MB a write
for gen in itertools.count():
    save_checkpoint({str(ckpt)!r}, model, {{"gen": gen}})
    print(gen, flush=True)
"""], env=ENV, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "0"  # type: ignore[union-attr]
    temps: list[Path] = []
    while not temps and child.poll() is None:  # kill it while the next write is in progress
        temps = list(tmp_path.glob(".last.pt.*.tmp"))
        time.sleep(0.001)
    child.kill()
    assert temps, "the child ended before it could be killed mid-write"
    child.wait(timeout=30)

    loaded = load_checkpoint(ckpt)
    assert isinstance(loaded["meta"]["gen"], int) and loaded["model"]["weight"].shape == (2048, 2048)
    assert [p.name for p in tmp_path.glob("*.pt")] == ["last.pt"]  # the temp file never looks like one
    for tmp in tmp_path.glob(".last.pt.*.tmp"):
        if tmp.stat().st_size < ckpt.stat().st_size:  # torn: refused with a message, not loaded
            with pytest.raises(CheckpointError, match="cannot read checkpoint"):
                load_checkpoint(tmp)


# --- divergence -------------------------------------------------------------------------

def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             cache: Path, capsys: pytest.CaptureFixture) -> None:
    """A NaN loss at step 5 (epoch 2), found at a log_every=2 check, is named exactly."""
    real_loss, calls = train.LMTask.loss, []

    def loss(self: Any, model: Any, batch: Any) -> Any:
        value, n = real_loss(self, model, batch)
        calls.append(1)
        return (value * float("nan") if len(calls) == 5 else value), n

    monkeypatch.setattr(train.LMTask, "loss", loss)
    out = tmp_path / "run"
    assert train.main(lm_args(out, cache, "--epochs", "2", "--max-steps-per-epoch", "3", "--log-every", "2")) == 3
    assert "DIVERGED: non-finite loss (nan) at step 5" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "diverged" and results["stop_reason"] == "non-finite loss (nan) at step 5"
    last = load_checkpoint(out / "last.pt")
    assert last["meta"]["state"]["global_step"] == 3  # the end of epoch 1, the last good state
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert (out / "best.pt").is_file()


def test_nonfinite_validation_loss_keeps_last_good_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              cache: Path, capsys: pytest.CaptureFixture) -> None:
    """Finite training losses but non-finite weights (seen as a NaN validation loss after
    epoch 2): last.pt stays the one of epoch 1."""
    real_evaluate = train.LMTask.evaluate

    def evaluate(self: Any, model: Any, split: str, *args: Any) -> dict[str, Any]:
        metrics = real_evaluate(self, model, split, *args)
        return {**metrics, "loss": float("nan")} if (tmp_path / "run" / "last.pt").is_file() else metrics

    monkeypatch.setattr(train.LMTask, "evaluate", evaluate)
    out = tmp_path / "run"
    assert train.main(lm_args(out, cache, "--epochs", "2", "--max-steps-per-epoch", "3")) == 3
    assert "DIVERGED: non-finite validation loss (nan) after step 6" in capsys.readouterr().out
    assert load_checkpoint(out / "last.pt")["meta"]["state"]["global_step"] == 3
    assert json.loads((out / "results.json").read_text())["status"] == "diverged"


# --- hostile and mismatched inputs ------------------------------------------------------

class _Payload:
    """Unpickling this runs open(marker, "w"): a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("container", ["torch.save", "plain pickle"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the weights_only unpickler on plain pickles
def test_malicious_pickle_is_refused_unexecuted(run_copy: Path, tmp_path: Path, cache: Path, container: str,
                                                capsys: pytest.CaptureFixture) -> None:
    save, unsafe_load = {"torch.save": (torch.save, lambda f: torch.load(f, weights_only=False)),
                         "plain pickle": (pickle.dump, pickle.load)}[container]
    marker = tmp_path / "pwned"
    payload = {"model": _Payload(marker), "meta": "{}"}
    for name in ("last.pt", "best.pt"):
        with open(run_copy / name, "wb") as f:
            save(payload, f)
    with open(run_copy / "last.pt", "rb") as f:
        unsafe_load(f)  # the control: unpickled without weights_only, the payload runs
    assert marker.exists()
    marker.unlink()
    before = snapshot(run_copy)

    assert train.main(lm_args(run_copy, cache, "--epochs", "1", "--max-steps-per-epoch", "3", "--resume")) == 2
    assert eval_wikitext.main([str(run_copy)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: refusing to load {run_copy / name}: not a plain-weights checkpoint "
                   f"(weights_only=True rejected it)" for name in ("last.pt", "best.pt")]
    assert not marker.exists()
    assert snapshot(run_copy) == before


def test_resume_with_other_config_is_refused(run_copy: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(run_copy)
    args = lm_args(run_copy, cache, "--epochs", "1", "--max-steps-per-epoch", "3", "--resume")
    args[args.index("--lr") + 1] = "2e-3"
    assert train.main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run_copy / 'last.pt'} was written by another configuration")
    assert "train.lr (checkpoint 0.001, now 0.002)" in err[0]
    assert snapshot(run_copy) == before


def test_eval_expecting_another_model_is_refused(run_copy: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(run_copy)
    assert eval_wikitext.main([str(run_copy), "--expect", "model=grassmann", "--expect", "seq_len=16"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {run_copy / 'best.pt'} is from another configuration: "
                   "model (checkpoint 'transformer', now 'grassmann')"]
    assert snapshot(run_copy) == before  # no eval_test.json


def _write_snli_train(data: Path, lines: list[str]) -> Path:
    shutil.copytree(DATA / "snli_1.0", data / "snli_1.0")
    path = data / "snli_1.0" / "train.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0})


@pytest.mark.parametrize("lines, where, what", [
    ([GOOD, '{"premise": "A cat", '], 2, "bad JSON"),
    ([GOOD, GOOD, json.dumps({"premise": "a", "hypothesis": "b", "label": 7})], 3, "unknown label 7"),
    ([json.dumps({"premise": "a", "hypothesis": "b", "label": -1})], 1, "empty split"),
])
def test_malformed_snli_is_one_line_with_file_and_line(tmp_path: Path, cache: Path, lines: list[str], where: int,
                                                       what: str, capsys: pytest.CaptureFixture) -> None:
    path = _write_snli_train(tmp_path / "data", lines)
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("previous\n")  # an earlier run's output must survive
    args = ["--model", "transformer", *TINY, "--data-dir", str(tmp_path / "data"), "--max-len", "32",
            "--cache-dir", str(cache), "--out-dir", str(out), "--epochs", "1"]
    assert train_snli.main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}:{where}: {what}"), err
    assert [p.name for p in out.iterdir()] == ["results.json"] and (out / "results.json").read_text() == "previous\n"


def test_malformed_snli_through_the_real_cli(tmp_path: Path, cache: Path) -> None:
    """The same, as a process: exit status 2 and one line on stderr, no traceback."""
    path = _write_snli_train(tmp_path / "data", [GOOD, "not json"])
    proc = run_module("grassmann_flows.train_snli", [
        "--model", "transformer", *TINY, "--data-dir", str(tmp_path / "data"), "--max-len", "32",
        "--cache-dir", str(cache), "--out-dir", str(tmp_path / "run")])
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {path}:2: bad JSON (Expecting value at column 1)"]
