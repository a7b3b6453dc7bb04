"""Training loop: exact resume, results and checkpoint contents, bad checkpoints (in-process)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import torch

from grassmann_flows import eval_snli, eval_wikitext, train, train_snli
from grassmann_flows.training import TrainConfig, lr_at
from grassmann_flows.utils.checkpoint import load_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "data"
TINY = ["--opt", "d_model=32", "--opt", "d_ff=64", "--opt", "n_heads=2", "--n-layers", "2", "--seq-len", "16",
        "--batch-size", "8", "--max-steps-per-epoch", "6", "--epochs", "2", "--log-every", "2",
        "--data-dir", str(FIXTURE)]


def _train(tmp_path: Path, out: str, *extra: str, model: str = "grassmann") -> int:
    return train.main(["--model", model, *TINY, "--cache-dir", str(tmp_path / "cache"),
                       "--out-dir", str(tmp_path / out), *extra])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("model", ["grassmann", "transformer"])
def test_resume_matches_uninterrupted_run(tmp_path: Path, model: str) -> None:
    assert _train(tmp_path, "full", model=model) == 0
    # Stop mid-epoch 2 (step 9 of 12), then resume from last.pt.
    assert _train(tmp_path, "split", "--stop-after-steps", "9", model=model) == 0
    stopped = json.loads((tmp_path / "split" / "results.json").read_text())
    assert stopped["status"] == "interrupted" and len(stopped["epochs"]) == 1
    assert _train(tmp_path, "split", "--resume", model=model) == 0
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "split" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.loads((tmp_path / "full" / "results.json").read_text())
    rb = json.loads((tmp_path / "split" / "results.json").read_text())
    assert [e["val_loss"] for e in ra["epochs"]] == [e["val_loss"] for e in rb["epochs"]]
    # The epoch's mean train loss is summed in float32 host-side chunks whose boundaries move
    # with the interruption, so it may differ in the last bits; the weights may not.
    assert [e["train_loss"] for e in ra["epochs"]] == pytest.approx([e["train_loss"] for e in rb["epochs"]], rel=1e-6)
    assert ra["test"] == rb["test"]


def test_run_directory_contents(tmp_path: Path) -> None:
    assert _train(tmp_path, "run") == 0
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "results.json", "best.pt", "last.pt"):
        assert (run / name).is_file(), name
    res = json.loads((run / "results.json").read_text())
    assert res["status"] == "completed" and res["corpus"] == "custom"
    assert len(res["epochs"]) == 2 and res["best_epoch"] in (1, 2)
    best = min(res["epochs"], key=lambda e: e["val_loss"])
    assert res["best_val_ppl"] == pytest.approx(best["val_ppl"])
    assert res["test"]["ppl"] > 1 and res["tokens_per_s"] > 0 and res["first_step_s"] > 0
    assert res["epochs_run"] == 2 and res["stopped_early"] is False
    assert datetime.fromisoformat(res["finished_at"]).tzinfo is not None  # UTC, for "newest copy"
    assert {"git_sha", "torch", "python"} <= set(res["env"])
    # the uncommitted edits behind the SHA, exactly when there are some
    assert (run / "git.diff").is_file() == bool(res["env"]["git_dirty"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["mixer"]["offsets"] == [1, 2, 4, 8, 12, 16] and cfg["train"]["epochs"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"step", "eval"}
    assert all(r["step_ms"] > 0 for r in records if r["kind"] == "step")
    assert [r["epoch"] for r in records if r["kind"] == "eval" and r["split"] == "validation"] == [1, 2]
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["meta"]["state"]["best_epoch"] == res["best_epoch"]


def test_eval_reproduces_training_test_metric(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path, "run") == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert eval_wikitext.main([str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
                               "--sliding-window", "8"]) == 0
    out = json.loads((tmp_path / "run" / "eval_test.json").read_text())
    assert out["blocks"]["ppl"] == pytest.approx(res["test"]["ppl"], rel=1e-6)
    assert out["sliding"]["n_targets"] > 0 and out["sliding"]["ppl"] > 1


@pytest.mark.parametrize("task", ["wikitext", "snli"])
def test_eval_clis_evaluate_best_pt_not_last_pt(tmp_path: Path, task: str) -> None:
    """A run whose best epoch is not its last: last.pt holds the last epoch's (worse) weights,
    here those of best.pt moved away by noise. The eval CLI given the run directory must
    score best.pt: the test metric training computed there, not what last.pt scores."""
    run, cache = tmp_path / "run", str(tmp_path / "cache")
    if task == "wikitext":
        assert _train(tmp_path, "run", "--eval-max-batches", "2") == 0
        evaluate, key = eval_wikitext, "loss"
    else:
        assert train_snli.main(["--model", "transformer", *TINY[:6], "--n-layers", "1", "--max-len", "32",
                                "--batch-size", "8", "--max-steps-per-epoch", "3", "--epochs", "2",
                                "--eval-max-batches", "2", "--data-dir", str(FIXTURE), "--cache-dir", cache,
                                "--out-dir", str(run)]) == 0
        evaluate, key = eval_snli, "loss"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    torch.manual_seed(0)
    ckpt["model"] = {k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v
                     for k, v in _weights(run / "best.pt").items()}
    torch.save(ckpt, run / "last.pt")
    args = ["--cache-dir", cache, "--max-batches", "2", "--batch-size", "8"]

    def score(target: Path) -> float:
        assert evaluate.main([str(target), *args]) == 0
        out = json.loads((run / "eval_test.json").read_text())
        return (out["blocks"] if task == "wikitext" else out)[key]

    at_last = score(run / "last.pt")
    at_run = score(run)
    trained = json.loads((run / "results.json").read_text())["test"][key]  # computed in training at best.pt
    assert at_run == pytest.approx(trained, rel=1e-5) and at_run != pytest.approx(at_last, rel=1e-3)


def test_resume_refuses_other_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path, "run", "--stop-after-steps", "3") == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    assert _train(tmp_path, "run", "--resume", "--lr", "1e-3") == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "train.lr" in err
    assert (tmp_path / "run" / "last.pt").read_bytes() == before  # nothing lost


def test_resume_reads_the_mixer_field_of_older_checkpoints(tmp_path: Path) -> None:
    """A last.pt written while `mixer_impl` was called `impl` continues, and on another
    implementation too: the three compute the same function."""
    assert _train(tmp_path, "run", "--stop-after-steps", "3") == 0
    path = tmp_path / "run" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    meta = json.loads(ckpt["meta"])
    meta["model"]["mixer"]["impl"] = meta["model"]["mixer"].pop("mixer_impl")
    torch.save({**ckpt, "meta": json.dumps(meta)}, path)
    assert _train(tmp_path, "run", "--resume", "--mixer-impl", "naive") == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_corrupt_checkpoint_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              content: bytes) -> None:
    bad = tmp_path / "best.pt"
    bad.write_bytes(content)
    assert eval_wikitext.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(bad) in err and "\n" not in err


def test_schedule_warmup_then_cosine_to_floor() -> None:
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, 110, cfg) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone decay after warmup
    assert lr_at(110, 110, cfg) == pytest.approx(0.1)  # ends on the floor
