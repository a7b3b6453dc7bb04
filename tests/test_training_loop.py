"""The training loop's bookkeeping against values the tests compute on their own.

`fit` runs on small stand-in tasks (a linear least-squares model, a bigram LM) whose
validation metric, gradients, clock and losses the test controls or recomputes: which
checkpoint is best, early stopping, gradient clipping, timing fields, precision, and
token-weighted perplexity with a ragged last batch.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from grassmann_flows import eval_snli, eval_wikitext, train, train_snli, training
from grassmann_flows.data.wikitext import LMBlocks, LMDataConfig
from grassmann_flows.models import build_model
from grassmann_flows.train import LMTask, evaluate_blocks
from grassmann_flows.training import TrainConfig, epoch_order, fit
from grassmann_flows.utils import env
from grassmann_flows.utils.checkpoint import load_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "data"
DIM, N_TRAIN, BATCH = 4, 32, 8  # 4 steps per epoch
RUN_INFO = {"summary": {"run_name": "scripted", "task": "scripted"}}


class ScriptedTask:
    """Least squares on a linear model; validation losses follow `val_losses`, epoch by epoch.

    evaluate records (split, precision, weights) of every call.
    """

    name, metric, higher_is_better = "scripted", "loss", False

    def __init__(self, val_losses: list[float], scale: float = 1.0) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N_TRAIN, DIM, generator=g) * scale
        self.y = torch.randn(N_TRAIN, 1, generator=g)
        self.val_losses = val_losses
        self.evals: list[tuple[str, str, dict[str, torch.Tensor]]] = []

    def n_train(self) -> int:
        return N_TRAIN

    def train_batch(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[indices], self.y[indices]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        return F.mse_loss(model(x), y), x.numel()

    def evaluate(self, model: nn.Module, split: str, device: torch.device, batch_size: int, max_batches: int,
                 precision: str) -> dict[str, Any]:
        self.evals.append((split, precision, {k: v.clone() for k, v in model.state_dict().items()}))
        n_val = sum(s == "validation" for s, _, _ in self.evals)
        return {"loss": self.val_losses[n_val - 1] if split == "validation" else 0.0}

    def weights_at(self, split: str, i: int = 0) -> dict[str, torch.Tensor]:
        return [w for s, _, w in self.evals if s == split][i]


def _cfg(**kw: Any) -> TrainConfig:
    base = dict(epochs=4, batch_size=BATCH, lr=1e-2, warmup_steps=0, weight_decay=0.0, grad_clip=0.0,
                device="cpu", precision="fp32", log_every=2)
    return TrainConfig(**{**base, **kw})


def _fit(task: Any, run: Path, model: nn.Module | None = None, resume: bool = False, **kw: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    return fit(model or nn.Linear(DIM, 1), task, _cfg(**kw), run, RUN_INFO, resume=resume)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_best_pt_is_the_best_validation_epoch(tmp_path: Path) -> None:
    """Validation improves, then worsens while the training loss keeps falling: best.pt,
    best_epoch and the test evaluation belong to epoch 2, not the last or the lowest-training-loss epoch."""
    task = ScriptedTask([3.0, 1.0, 2.0, 2.5])
    res = _fit(task, tmp_path / "run")
    train_losses = [e["train_loss"] for e in res["epochs"]]
    assert train_losses == sorted(train_losses, reverse=True)  # the lowest training loss is epoch 4's
    assert res["best_epoch"] == 2 and res["best_val_loss"] == 1.0
    epoch2, epoch4 = task.weights_at("validation", 1), task.weights_at("validation", 3)
    assert not _same(epoch2, epoch4)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert _same(best["model"], epoch2) and best["meta"]["state"]["best_epoch"] == 2
    assert _same(load_checkpoint(tmp_path / "run" / "last.pt")["model"], epoch4)
    assert _same(task.weights_at("test"), epoch2)  # test is evaluated at best.pt
    # evaluation runs at the run's precision, validation and test alike
    assert [(s, p) for s, p, _ in task.evals] == [("validation", "fp32")] * 4 + [("test", "fp32")]


def _schedule(step: int, total: int, lr: float, warmup: int, floor_ratio: float) -> float:
    """The documented schedule, written out apart from `lr_at`: linear warmup over `warmup`
    steps, then cosine from lr down to lr * floor_ratio at step `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    floor = lr * floor_ratio
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_each_step_uses_and_logs_the_schedules_lr_over_the_whole_run(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    """The lr the optimizer applies at every step, and the one logged for it, is the schedule's
    for that step over epochs x steps-per-epoch steps: not the next step's, and not a schedule
    stretched over one epoch too many (whose last steps would stay far above the floor)."""
    applied: list[float] = []
    make = training.make_optimizer

    def recording_optimizer(*args: Any) -> torch.optim.Optimizer:
        opt = make(*args)
        opt.register_step_pre_hook(lambda o, a, k: applied.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(training, "make_optimizer", recording_optimizer)
    cfg = dict(epochs=3, lr=1e-2, warmup_steps=2, min_lr_ratio=0.1, log_every=1)
    _fit(ScriptedTask([1.0, 1.0, 1.0]), tmp_path / "run", **cfg)
    total = 3 * (N_TRAIN // BATCH)
    expected = [_schedule(s, total, 1e-2, 2, 0.1) for s in range(total)]
    assert applied == pytest.approx(expected, rel=1e-12)
    logged = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "step"]
    assert [r["step"] for r in logged] == list(range(1, total + 1))
    assert [r["lr"] for r in logged] == pytest.approx(expected, rel=1e-12)


class RecordingTask(ScriptedTask):
    """ScriptedTask that records the item order of every training batch it serves."""

    def __init__(self, val_losses: list[float]) -> None:
        super().__init__(val_losses)
        self.batches: list[list[int]] = []

    def train_batch(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        self.batches.append(indices.tolist())
        return super().train_batch(indices, device)


def test_each_epoch_shuffles_afresh_and_the_seed_reproduces_the_order(tmp_path: Path) -> None:
    def orders(seed: int, run: str) -> list[list[int]]:
        task = RecordingTask([1.0] * 3)
        _fit(task, tmp_path / run, epochs=3, seed=seed)
        per_epoch = N_TRAIN // BATCH
        return [sum(task.batches[e * per_epoch:(e + 1) * per_epoch], []) for e in range(3)]

    first = orders(0, "a")
    assert all(sorted(o) == list(range(N_TRAIN)) for o in first)  # every item once per epoch
    assert len({tuple(o) for o in first}) == 3  # each epoch in its own order
    assert orders(0, "b") == first  # the seed reproduces them
    assert orders(1, "c") != first


@pytest.mark.parametrize("patience, epochs_run", [(0, 6), (2, 4), (3, 6)])
def test_patience_stops_after_evaluations_without_improvement(tmp_path: Path, patience: int,
                                                              epochs_run: int) -> None:
    """Best at epoch 2, then two worse epochs, then a new best at 5: patience 2 stops
    after epoch 4; patience 3 sees the improvement at 5 and runs on; 0 is off."""
    val = [3.0, 1.0, 2.0, 2.5, 0.5, 0.6]
    task = ScriptedTask(val)
    res = _fit(task, tmp_path / "run", epochs=6, patience=patience)
    assert res["status"] == "completed" and res["epochs_run"] == len(res["epochs"]) == epochs_run
    assert res["stopped_early"] is (epochs_run < 6)
    best_epoch = 1 + int(np.argmin(val[:epochs_run]))
    assert res["best_epoch"] == best_epoch
    assert _same(task.weights_at("test"), task.weights_at("validation", best_epoch - 1))
    assert res["test"] == {"loss": 0.0}
    if res["stopped_early"]:
        assert res["stop_reason"] == "patience=2: no validation improvement since epoch 2"
        # Resuming a run that stopped early stops again: no step, no validation, same test.
        steps = load_checkpoint(tmp_path / "run" / "last.pt")["meta"]["state"]["global_step"]
        again = ScriptedTask(val)
        res2 = _fit(again, tmp_path / "run", resume=True, epochs=6, patience=patience)
        assert res2["stopped_early"] and res2["epochs_run"] == epochs_run
        assert [s for s, _, _ in again.evals] == ["test"]
        assert load_checkpoint(tmp_path / "run" / "last.pt")["meta"]["state"]["global_step"] == steps


@pytest.mark.parametrize("at_eval", [1, 2])
def test_signal_during_validation_stops_at_that_epoch_end(tmp_path: Path, at_eval: int) -> None:
    """SIGTERM (a time budget) during a validation pass, the last one included: the run
    stops at that epoch's end, leaves last.pt and an "interrupted" results.json without a
    test evaluation, and --resume finishes it."""

    class Budget(ScriptedTask):
        def evaluate(self, model: nn.Module, split: str, *args: Any) -> dict[str, Any]:
            if split == "validation" and sum(s == "validation" for s, _, _ in self.evals) == at_eval - 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().evaluate(model, split, *args)

    task, run = Budget([2.0, 1.0]), tmp_path / "run"
    res = _fit(task, run, epochs=2)
    assert res["status"] == "interrupted" and res["stop_reason"] == "received SIGTERM"
    assert training.exit_code(res) == 130 and res["test"] is None and res["epochs_run"] == at_eval
    assert json.loads((run / "results.json").read_text())["status"] == "interrupted"
    last = load_checkpoint(run / "last.pt")
    assert last["meta"]["state"]["global_step"] == at_eval * N_TRAIN // BATCH
    assert _same(last["model"], task.weights_at("validation", at_eval - 1))
    assert [s for s, _, _ in task.evals] == ["validation"] * at_eval

    again = ScriptedTask([2.0, 1.0][at_eval:])
    res = _fit(again, run, resume=True, epochs=2)
    assert res["status"] == "completed" and res["epochs_run"] == 2 and res["best_epoch"] == 2
    assert [s for s, _, _ in again.evals] == ["validation"] * (2 - at_eval) + ["test"]


def test_grad_clip_applies_the_clipped_gradient(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The gradient the optimizer steps with is the hand-computed batch gradient scaled to
    norm grad_clip (inputs scaled up so that every raw gradient is far above it)."""
    clip = 0.5
    seen: list[list[torch.Tensor]] = []
    real_make = training.make_optimizer

    def make_optimizer(*args: Any) -> torch.optim.Optimizer:
        opt = real_make(*args)
        real_step = opt.step

        def step(*a: Any, **k: Any) -> Any:
            seen.append([p.grad.clone() for g in opt.param_groups for p in g["params"]])
            return real_step(*a, **k)

        opt.step = step  # type: ignore[method-assign]
        return opt

    monkeypatch.setattr(training, "make_optimizer", make_optimizer)
    task = ScriptedTask([1.0], scale=100.0)
    torch.manual_seed(0)
    model = nn.Linear(DIM, 1)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    _fit(task, tmp_path / "run", model=model, epochs=1, grad_clip=clip)

    # d/dW, d/db of mean((x W^T + b - y)^2) over the first batch, by hand
    rows = epoch_order(N_TRAIN, 0, 0)[:BATCH]
    x, y = task.x[rows].double(), task.y[rows].double()
    r = 2 * (x @ w.double().T + b.double() - y) / BATCH
    raw = [r.T @ x, r.sum(0)]  # weight (1, DIM), bias (1,)
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in raw))
    assert norm > 100 * clip
    expected = [g * clip / (norm + 1e-6) for g in raw]  # clip_grad_norm_'s scale
    assert len(seen) == N_TRAIN // BATCH
    by_shape = {tuple(g.shape): g for g in seen[0]}
    for e in expected:
        torch.testing.assert_close(by_shape[tuple(e.shape)].double(), e, rtol=1e-5, atol=1e-7)
    for grads in seen:
        assert math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)) == pytest.approx(clip, rel=1e-5)


def test_first_step_is_timed_apart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On a fake clock where the first step takes 100 s and every other step 1 s: the
    first step is reported on its own, and train_time_s, tokens_per_s and step_ms leave it
    out; a resumed process's first step is left out as well."""
    clock = [0.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: clock[0])

    class Timed(ScriptedTask):
        calls = 0

        def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
            Timed.calls += 1
            clock[0] += 100.0 if Timed.calls == 1 else 1.0
            return super().loss(model, batch)

    run = tmp_path / "run"
    res = _fit(Timed([1.0, 0.5]), run, epochs=2, log_every=1)
    assert res["first_step_s"] == 100.0 and res["train_time_s"] == 7.0
    assert res["tokens_per_s"] == BATCH * DIM  # 7 timed steps of BATCH * DIM tokens in 7 s
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert [r["step_ms"] for r in steps] == [None] + [1000.0] * 7  # the first window holds only the first step

    Timed.calls = 0
    _fit(Timed([1.0, 0.5]), tmp_path / "split", epochs=2, stop_after_steps=3)
    res = _fit(Timed([1.0, 0.5]), tmp_path / "split", epochs=2, resume=True)
    assert res["first_step_s"] == 100.0 + 1.0  # the resumed process's first step took 1 s
    assert res["train_time_s"] == 2.0 + 4.0  # steps 2-3, then 5-8


def test_optimizer_groups_are_printed_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = nn.Sequential(nn.Linear(DIM, 3), nn.LayerNorm(3), nn.Linear(3, 1))
    _fit(ScriptedTask([1.0]), tmp_path / "run", model=model, epochs=1, weight_decay=0.1)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("optimizer")]
    # decayed: the two weight matrices (4*3 + 3*1); not decayed: 2 biases and the LayerNorm's 2 vectors
    assert lines == ["optimizer AdamW: 2 tensors (15 parameters) at weight decay 0.1, "
                     "4 tensors (10 parameters) at weight decay 0.0"]


def test_git_diff_is_saved_only_for_a_dirty_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(env, "git_diff", lambda: "diff --git a/x b/x\n+edit")
    path = tmp_path / "git.diff"
    env.save_git_diff(path, dirty=True)
    assert path.read_text() == "diff --git a/x b/x\n+edit\n"
    env.save_git_diff(path, dirty=False)  # a clean rerun in the same directory drops the stale diff
    assert not path.exists()


# --- token-weighted perplexity --------------------------------------------------------

V, L = 13, 6


class Bigram(nn.Module):
    """Logits of the next token from the current one: (B, T) ids -> (B, T, V)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(V, V)
        # Confident about "t -> t+1": counting blocks score near 0, random ones far from it,
        # so an average of per-batch means would land far from the token-weighted mean.
        with torch.no_grad():
            self.table.weight.copy_(torch.randn(V, V, generator=torch.Generator().manual_seed(1)))
            self.table.weight[torch.arange(V), (torch.arange(V) + 1) % V] += 8.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x)


def _tokens(n_blocks: int, block_len: int, seed: int) -> np.ndarray:
    """Random blocks, then 3 counting blocks at the end (the ragged last batch of 4)."""
    rng = np.random.default_rng(seed)
    random = rng.integers(0, V, size=(n_blocks - 3) * block_len)
    counting = (np.arange(3 * block_len) + 5) % V
    return np.concatenate([random, counting, [1]]).astype(np.int32)  # + 1 token of dropped remainder


def _independent_ppl(model: nn.Module, tokens: np.ndarray, chunking: str) -> float:
    """exp(mean negative log-likelihood over every target token), one block at a time in float64."""
    block_len = L + 1 if chunking == "l_plus_1" else L
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(tokens) // block_len):
            block = torch.from_numpy(tokens[i * block_len:(i + 1) * block_len].astype(np.int64))
            x, targets = (block[:-1], block[1:]) if chunking == "l_plus_1" else (block, block[1:])
            logp = torch.log_softmax(model(x[None])[0].double(), dim=-1)
            total -= sum(float(logp[j, t]) for j, t in enumerate(targets))
            count += len(targets)
    return math.exp(total / count)


@pytest.mark.parametrize("chunking", ["l_plus_1", "l_shift"])
def test_reported_perplexity_is_token_weighted(tmp_path: Path, chunking: str) -> None:
    """results.json's validation and test PPL equal the test's own per-token computation
    over 11 blocks in batches of 4 (4 + 4 + 3)."""
    cfg = LMDataConfig(seq_len=L, chunking=chunking)
    block_len = L + 1 if chunking == "l_plus_1" else L
    tokens = {split: _tokens(11, block_len, seed) for seed, split in enumerate(("train", "validation", "test"))}
    splits = {split: LMBlocks(t, cfg) for split, t in tokens.items()}
    assert len(splits["test"]) == 11
    model = Bigram()  # a table of logits, no tied head to compute in chunks
    res = fit(model, LMTask(splits, "logits"), _cfg(epochs=1, batch_size=4, eval_batch_size=4, lr=1e-3),
              tmp_path / "run", RUN_INFO)
    trained = Bigram()
    trained.load_state_dict(load_checkpoint(tmp_path / "run" / "best.pt")["model"])
    assert res["best_val_ppl"] == pytest.approx(_independent_ppl(trained, tokens["validation"], chunking), rel=1e-6)
    assert res["test"]["ppl"] == pytest.approx(_independent_ppl(trained, tokens["test"], chunking), rel=1e-6)
    # the direct entry point, too, and a batch size that splits the blocks differently
    direct = evaluate_blocks(trained, splits["test"], torch.device("cpu"), batch_size=5, head_loss="logits")
    assert direct["ppl"] == pytest.approx(res["test"]["ppl"], rel=1e-6)
    assert direct["n_targets"] == 11 * (block_len - 1)


def test_chunked_head_trains_what_the_logits_train(tmp_path: Path) -> None:
    """A real (tied-head) model, one epoch each way: the chunked cross-entropy and the one
    from materialised logits give the same losses, perplexities and weights (float32 sums
    in another order: 1e-5)."""
    cfg = LMDataConfig(seq_len=L)
    splits = {split: LMBlocks(_tokens(9, L + 1, seed), cfg) for seed, split in enumerate(("train", "validation", "test"))}
    results, weights = {}, {}
    for head_loss in ("logits", "chunked"):
        torch.manual_seed(0)
        model = build_model("grassmann", "paper", vocab_size=V, d_model=16, n_heads=2, d_ff=32, n_layers=2,
                            n_positions=L, reduced_dim=4)
        results[head_loss] = fit(model, LMTask(splits, head_loss), _cfg(epochs=2, batch_size=4, lr=1e-2,
                                 head_loss=head_loss), tmp_path / head_loss, RUN_INFO)
        weights[head_loss] = model.state_dict()
    for key in ("best_val_ppl",):
        assert results["chunked"][key] == pytest.approx(results["logits"][key], rel=1e-5)
    assert results["chunked"]["test"]["ppl"] == pytest.approx(results["logits"]["test"]["ppl"], rel=1e-5)
    for name, w in weights["logits"].items():
        torch.testing.assert_close(weights["chunked"][name], w, rtol=1e-4, atol=1e-5, msg=name)


# --- precision ------------------------------------------------------------------------

TINY = ["--model", "transformer", "--opt", "d_model=32", "--opt", "d_ff=64", "--opt", "n_heads=2", "--n-layers", "1",
        "--batch-size", "4", "--epochs", "1", "--max-steps-per-epoch", "2", "--eval-max-batches", "2",
        "--data-dir", str(FIXTURE)]


@pytest.mark.parametrize("task, precision", [("wikitext", "bf16"), ("wikitext", "fp32"), ("snli", "bf16")])
def test_evaluation_runs_at_the_run_precision(tmp_path: Path, task: str, precision: str) -> None:
    """Validation and test inside the run, and the eval entry point afterwards, all run
    under the autocast the run trained with (seen from inside every eval-mode forward)."""
    seen: dict[bool, set[tuple[bool, torch.dtype]]] = {True: set(), False: set()}

    def record(module: nn.Module, args: Any) -> None:
        seen[module.training].add((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))

    run, cache = tmp_path / "run", str(tmp_path / "cache")
    entry, evaluate, extra = {"wikitext": (train, eval_wikitext, ["--seq-len", "16"]),
                              "snli": (train_snli, eval_snli, ["--max-len", "32"])}[task]
    expected = {(True, torch.bfloat16)} if precision == "bf16" else {(False, torch.bfloat16)}
    handle = nn.modules.module.register_module_forward_pre_hook(record)
    try:
        assert entry.main([*TINY, *extra, "--precision", precision, "--cache-dir", cache, "--out-dir", str(run)]) == 0
        assert seen[True] == seen[False] == expected
        seen[False].clear()
        assert evaluate.main([str(run), "--cache-dir", cache, "--max-batches", "2"]) == 0
        assert seen[False] == expected
    finally:
        handle.remove()
    assert json.loads((run / "eval_test.json").read_text())["precision"] == precision
