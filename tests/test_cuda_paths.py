"""What only a GPU run exercises, tried on the CPU by standing in for CUDA.

Each test here stands in for the device where a GPU run takes another path: the meta
device for tensors the CPU RNG cannot take, monkeypatched `torch.cuda` generators, a
world size of two for the DDP decisions, bf16 autocast on the CPU. docs/cuda-paths.md
lists every CPU-vs-CUDA path and the test that covers it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from grassmann_flows import eval_snli, runs, train, train_snli, training
from grassmann_flows.models import ModelConfig, model_from_config
from grassmann_flows.utils import checkpoint, distributed
from grassmann_flows.utils.checkpoint import CheckpointError, load_checkpoint

DATA = Path(__file__).parent / "fixtures" / "data"
TINY = ["--opt", "d_model=32", "--opt", "d_ff=64", "--opt", "n_heads=2", "--n-layers", "1", "--data-dir", str(DATA),
        "--batch-size", "4", "--warmup-steps", "1", "--lr", "1e-3", "--eval-max-batches", "2"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def lm_run(out: Path, cache: Path, *extra: str, model: str = "grassmann") -> list[str]:
    return ["--model", model, *TINY, "--seq-len", "16", "--cache-dir", str(cache), "--out-dir", str(out), *extra]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A Grassmann LM run stopped after 2 of 4 steps (last.pt, config.json), dropout on."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert train.main(lm_run(out, cache, "--epochs", "1", "--max-steps-per-epoch", "4",
                             "--stop-after-steps", "2")) == 0
    return out


def rebuilt(run: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    """The run's model and optimizer, freshly built, and its config.json."""
    identity = json.loads((run / "config.json").read_text())
    model = model_from_config(ModelConfig.from_dict(identity["model"]))
    cfg = training.TrainConfig(**identity["train"])
    return model, training.make_optimizer(model, cfg, CPU), identity


# --- resuming --------------------------------------------------------------------------

def test_resume_reads_the_checkpoint_to_the_cpu(stopped_run: Path) -> None:
    """On CUDA, loading last.pt with map_location=device put the RNG states on the GPU, and
    torch.set_rng_state raised a TypeError: every resume crashed. The meta device stands in
    for the GPU here (the CPU RNG takes its tensors no more than a GPU's); the model and
    optimizer state still reach the parameters, and the RNG continues where it was saved."""
    model, optimizer, identity = rebuilt(stopped_run)
    torch.manual_seed(12345)
    state = training._resume(stopped_run / "last.pt", model, optimizer, identity, torch.device("meta"))
    ckpt = load_checkpoint(stopped_run / "last.pt")
    assert state.global_step == 2
    assert all(torch.equal(p, ckpt["model"][k]) for k, p in model.state_dict().items())
    assert len(optimizer.state) == len(list(model.parameters()))
    assert torch.equal(torch.get_rng_state(), ckpt["rng"][0]["torch"])


def test_every_checkpoint_load_of_a_run_goes_to_the_cpu(monkeypatch: pytest.MonkeyPatch, stopped_run: Path,
                                                        tmp_path: Path, cache: Path) -> None:
    """Resume and the final test evaluation (best.pt, optimizer included) ask for the CPU,
    not the training device: on a GPU, no second copy of weights and optimizer state beside
    the training ones. (On the CPU both are the same place: the call is what is checked.)"""
    run = Path(shutil.copytree(stopped_run, tmp_path / "run"))
    places = []

    def spy(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
        places.append((Path(path).name, map_location))
        return load_checkpoint(path, map_location)

    monkeypatch.setattr(training, "load_checkpoint", spy)
    assert train.main(lm_run(run, cache, "--epochs", "1", "--max-steps-per-epoch", "4", "--resume")) == 0
    assert places == [("last.pt", "cpu"), ("best.pt", "cpu")], places


def test_cuda_rng_restores_the_training_device_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint holds the CUDA generator of the device it trained on, and resuming restores
    it there, whatever number of GPUs is visible. Older files hold one state per GPU then
    visible: the training device's is taken, none when that GPU index is gone (the whole
    list went to set_rng_state_all, which fails where fewer GPUs are visible)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((4,), device.index, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((state.tolist(), device)))
    cuda1 = torch.device("cuda", 1)
    saved = checkpoint.rng_state(cuda1)
    assert saved["cuda"].tolist() == [1] * 4
    checkpoint.set_rng_state(saved, cuda1)
    legacy = {**saved, "cuda": [torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)]}
    checkpoint.set_rng_state(legacy, torch.device("cuda", 0))
    checkpoint.set_rng_state(legacy, torch.device("cuda", 3))  # saved with 2 GPUs visible: none to restore
    checkpoint.set_rng_state(saved, CPU)  # a CPU resume ignores the GPU's generator
    assert calls == [([1] * 4, 1), ([0] * 4, 0)]
    assert "cuda" not in checkpoint.rng_state(CPU)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_checkpoint_is_one_line(stopped_run: Path, tmp_path: Path, cache: Path, keep: float,
                                          capsys: pytest.CaptureFixture) -> None:
    """A torn last.pt (a full disk, a copy cut short) is a one-line error naming the file,
    exit 2; cut near its end, torch.load raises OSError [Errno 22], which read as nothing."""
    run = Path(shutil.copytree(stopped_run, tmp_path / "run"))
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="the file is truncated or corrupt"):
        load_checkpoint(run / "last.pt")
    assert train.main(lm_run(run, cache, "--epochs", "1", "--max-steps-per-epoch", "4", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot read checkpoint {run / 'last.pt'}: the file is "
                                               "truncated or corrupt")


def test_resume_compares_the_settings_not_their_messages(stopped_run: Path) -> None:
    """Settings a resume may change are left out of the comparison by name; a run stored
    before precision was stored resolved ("auto") resumes where "auto" resolves the same."""
    model, optimizer, identity = rebuilt(stopped_run)
    changed = {**identity, "train": {**identity["train"], "log_every": 7, "compile": "on"}}
    assert training._resume(stopped_run / "last.pt", model, optimizer, changed, CPU).global_step == 2
    other = {**identity, "train": {**identity["train"], "lr": 0.5}}
    with pytest.raises(CheckpointError, match=r"train\.lr \(checkpoint 0\.001, now 0\.5\)"):
        training._resume(stopped_run / "last.pt", model, optimizer, other, CPU)
    ckpt = torch.load(stopped_run / "last.pt", weights_only=True)
    meta = json.loads(ckpt["meta"])
    meta["train"]["precision"] = "auto"
    ckpt["meta"] = json.dumps(meta)
    legacy = stopped_run.parent / "legacy.pt"
    torch.save(ckpt, legacy)
    assert training._resume(legacy, model, optimizer, identity, CPU).global_step == 2
    bf16 = {**identity, "train": {**identity["train"], "precision": "bf16"}}
    with pytest.raises(CheckpointError, match="train.precision"):
        training._resume(legacy, model, optimizer, bf16, CPU)


# --- precision -------------------------------------------------------------------------

def test_precision_is_stored_resolved(stopped_run: Path) -> None:
    """config.json and the checkpoints hold the precision the run computed in, so that its
    evaluation on another device computes in the same one ("auto" would be re-resolved there)."""
    assert json.loads((stopped_run / "config.json").read_text())["train"]["precision"] == "fp32"
    assert load_checkpoint(stopped_run / "last.pt")["meta"]["train"]["precision"] == "fp32"
    assert training.resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert training.resolve_precision("auto", CPU) == "fp32"
    assert training.resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="--precision 'fp16': expected one of auto, bf16, fp32"):
        training.resolve_precision("fp16", CPU)


def test_grassmann_bf16_train_resume_and_eval_on_the_cpu(tmp_path: Path, cache: Path) -> None:
    """bf16 autocast end to end on the CPU (CUDA's default precision): a Grassmann LM trains
    two steps, resumes, evaluates; the losses are finite and stored at bf16."""
    from grassmann_flows import eval_wikitext

    run = tmp_path / "run"
    args = ("--epochs", "1", "--max-steps-per-epoch", "4", "--precision", "bf16")
    assert train.main(lm_run(run, cache, *args, "--stop-after-steps", "2")) == 0
    assert train.main(lm_run(run, cache, *args, "--resume")) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and torch.isfinite(torch.tensor(results["test"]["loss"]))
    assert eval_wikitext.main([str(run), "--cache-dir", str(cache), "--batch-size", "4", "--max-batches", "2"]) == 0
    evaluated = json.loads((run / "eval_test.json").read_text())
    assert evaluated["precision"] == "bf16"
    assert evaluated["blocks"]["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)


# --- SNLI -----------------------------------------------------------------------------

def test_snli_evaluation_rebuilds_the_trained_pooling(tmp_path: Path, cache: Path) -> None:
    """A run trained with --pooling cls is evaluated with cls pooling: the eval entry point
    reproduces the in-training test evaluation of best.pt exactly."""
    run = tmp_path / "run"
    assert train_snli.main(["--model", "transformer", *TINY, "--max-len", "32", "--pooling", "cls", "--epochs", "1",
                            "--max-steps-per-epoch", "2", "--cache-dir", str(cache), "--out-dir", str(run)]) == 0
    model, _, _ = runs.load_run(run, {}, CPU)
    assert model.pooling == "cls"
    assert eval_snli.main([str(run), "--cache-dir", str(cache), "--batch-size", "4", "--max-batches", "2"]) == 0
    in_training = json.loads((run / "results.json").read_text())["test"]
    evaluated = json.loads((run / "eval_test.json").read_text())
    assert evaluated["loss"] == pytest.approx(in_training["loss"], rel=1e-6)
    assert evaluated["confusion"] == in_training["confusion"]


# --- DDP decisions ---------------------------------------------------------------------

def test_ddp_skips_buffer_broadcasts_and_agrees_on_stops_at_flushes(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path, cache: Path) -> None:
    """As rank 0 of two: DDP is built without buffer broadcasts (the antisymmetrizers are
    constants, 11.6 MiB a step at N=6), and the ranks agree on a stop signal only where
    losses are flushed (log_every steps, the epoch's end) and after the evaluation, not
    with one collective per step."""
    built: list[dict[str, Any]] = []
    agreements = []

    def ddp(module: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
        built.append(kwargs)
        return module

    real_any_rank = distributed.any_rank
    monkeypatch.setattr(training, "DistributedDataParallel", ddp)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "any_rank", lambda flag: agreements.append(flag) or real_any_rank(flag))
    assert train.main(lm_run(tmp_path / "run", cache, "--epochs", "1", "--max-steps-per-epoch", "6",
                             "--log-every", "3")) == 0
    assert [kw["broadcast_buffers"] for kw in built] == [False]
    assert len(agreements) == 3  # after steps 3 and 6, and after the evaluation


# --- the grid's queue on GPUs ----------------------------------------------------------

SMI = ("0, GPU-1111aaaa-0000-0000-0000-000000000000, 81000\n"
       "1, GPU-2222bbbb-0000-0000-0000-000000000000, 40960\n"
       "2, GPU-3333cccc-0000-0000-0000-000000000000, 1024\n")


@pytest.mark.parametrize("visible, expected", [
    (None, [81000 / 1024, 40, 1]),
    ("2,0", [1, 81000 / 1024]),
    ("GPU-2222bbbb-0000-0000-0000-000000000000", [40]),
    ("GPU-3333cccc,1", [1, 40]),  # a UUID prefix, as CUDA accepts
    ("MIG-4444dddd", []),  # not a GPU nvidia-smi lists: the caller falls back to asking torch
])
def test_free_gpu_memory_of_the_visible_gpus(visible: str | None, expected: list[float]) -> None:
    """CUDA_VISIBLE_DEVICES may name GPUs by index or UUID; both pick nvidia-smi's rows
    (UUIDs were dropped before, and the free memory became each device's total)."""
    from grassmann_flows.grid.queue import _visible_free_gib

    assert _visible_free_gib(SMI, visible) == pytest.approx(expected)


def test_free_gpu_memory_without_nvidia_smi_asks_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """No nvidia-smi: torch answers in a child process, so the queue's parent never holds a
    CUDA context; the device total (what it fell back to before) is not free memory."""
    from grassmann_flows.grid import queue

    calls = []

    def run(cmd: list[str], **kwargs: Any) -> Any:
        calls.append(cmd)
        if cmd[0] == "nvidia-smi":
            raise FileNotFoundError("nvidia-smi")
        return subprocess.CompletedProcess(cmd, 0, stdout="70.5 12.25\n")

    monkeypatch.setattr(queue.subprocess, "run", run)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: pytest.fail("CUDA used in the parent"))
    assert queue._gpu_free_gib() == [70.5, 12.25]
    assert calls[1][1:3] == ["-c", queue._FREE_PROBE]


def test_step_estimates_can_run_in_a_child_process() -> None:
    """The estimate's steps on CUDA run in a spawned child (its CUDA context ends with it);
    here the child runs on the CPU, and stops when told to."""
    from grassmann_flows import grid
    from grassmann_flows.grid.preflight import _measure_in_child

    env = {"DATA_DIR": str(DATA), "CONTROLS": "0", "QUICK": "1", "SEEDS": "0", "LAYER_DEPTHS_OVERRIDE": "1",
           "SEQ_LENS": "16", "EXTRA_ARGS": "--opt d_model=32 --opt d_ff=64 --opt n_heads=2"}
    runs = grid.Planner(grid.Knobs.from_env(env)).speedrun(["transformer", "grassmann"], ["wikitext"])
    shapes = list({run.cost_key: run for run in runs}.values())
    seconds = _measure_in_child(shapes, "cpu", lambda: True)
    assert set(seconds) == {run.cost_key for run in shapes} and all(s > 0 for s in seconds.values())
    assert _measure_in_child(shapes, "cpu", lambda: False) == {}


def test_runs_share_the_cores_for_compile_workers_and_log_their_output(tmp_path: Path) -> None:
    """Inductor's compile pool defaults to every core, in every run at once: each run gets
    its share. The queue keeps a run's whole output in train.log, so `fit` adds nothing."""
    from grassmann_flows import grid

    knobs = grid.Knobs.from_env({"DATA_DIR": str(DATA), "QUICK": "1"})
    queue = grid.Queue(knobs, ["0", "0", "1", "1"], "train", tmp_path, "python")
    share = os.environ.get("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, (os.cpu_count() or 1) // 4)))
    assert queue._env["TORCHINDUCTOR_COMPILE_THREADS"] == share
    assert queue._env[training.OUTPUT_LOGGED_ENV] == "1"


def test_a_run_out_of_gpu_memory_fails_with_that_note_and_the_grid_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    """The run's last line says it ran out of GPU memory: its outcome says so, the next run starts."""
    from grassmann_flows import grid

    knobs = grid.Knobs.from_env({"DATA_DIR": str(DATA), "QUICK": "1", "SEEDS": "0", "CONTROLS": "0",
                                 "LAYER_DEPTHS_OVERRIDE": "1", "SEQ_LENS": "16"})
    planned = grid.Planner(knobs).speedrun(["transformer", "grassmann"], ["wikitext"])
    queue = grid.Queue(knobs, [None], "train", tmp_path, "python")
    oom = f"{runs.OOM_LINE}: CUDA out of memory. Tried to allocate 2.00 GiB (lower --batch-size, ...)\n"

    def execute(cmd: list[str], log: Path, slot: Any, on_line: Any = None) -> int:
        failing = planned[0].name in str(log)
        on_line("step 1/4 epoch 1 loss 9.0\n")
        if failing:
            on_line(oom)
        return 2 if failing else 0

    monkeypatch.setattr(queue, "_execute", execute)
    first, second = queue.run(planned)
    assert first.status == "failed" and first.note.startswith(oom.strip())
    assert second.status == "completed"


# --- one-line errors and tracebacks ----------------------------------------------------

def test_out_of_memory_is_one_line(capsys: pytest.CaptureFixture) -> None:
    def main(argv: Any) -> int:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nGPU 0 has ...")

    assert runs.cli(main)([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{runs.OOM_LINE}: CUDA out of memory. Tried to allocate 2.00 GiB.")


def test_a_library_error_keeps_its_traceback_and_reaches_train_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                   cache: Path) -> None:
    """A ValueError from the project's own code is a one-line error (a bad knob); one from a
    library (here raised as inductor would, from torch's code) keeps its traceback, and
    `fit` appends it to the run's train.log."""
    import torch._dynamo  # a module of torch's own, to raise from

    code = compile("def fail(*args, **kwargs):\n    raise ValueError('inductor: no kernel for this shape')\n",
                   torch._dynamo.__file__, "exec")
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    monkeypatch.setattr(train.LMTask, "loss", namespace["fail"])
    monkeypatch.delenv(training.OUTPUT_LOGGED_ENV, raising=False)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="inductor: no kernel"):
        train.main(lm_run(out, cache, "--epochs", "1", "--max-steps-per-epoch", "2"))
    log = (out / "train.log").read_text()
    assert "Traceback" in log and "ValueError: inductor: no kernel for this shape" in log


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_runs_end_with_a_killed_queue(tmp_path: Path) -> None:
    """gpu_window.sh's `timeout -k` SIGKILLs the queue's process group; the runs, each in its
    own session, must not outlive the queue and keep the GPU."""
    script = f"""
import sys, threading
from pathlib import Path
from grassmann_flows import grid
queue = grid.Queue(grid.Knobs.from_env({{"DATA_DIR": {str(DATA)!r}}}), [None, None], "train", Path({str(tmp_path)!r}),
                   sys.executable)
cmd = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(120)"]
threading.Thread(target=queue._execute, args=(cmd, Path({str(tmp_path / 'run.log')!r}), None,
                 lambda line: print(line, end="", flush=True))).start()
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    run_pid = int(parent.stdout.readline())  # type: ignore[union-attr]
    os.kill(run_pid, 0)  # alive
    parent.kill()
    parent.wait(timeout=30)
    for _ in range(100):
        try:
            os.kill(run_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(run_pid, 9)
    pytest.fail("the run outlived the killed queue")


# --- evaluation reads the device once ---------------------------------------------------

@pytest.mark.parametrize("n_tokens, stride, batch_size", [(50, 3, 4), (41, 8, 3), (33, 1, 64)])
def test_sliding_evaluation_scores_every_target_once(n_tokens: int, stride: int, batch_size: int) -> None:
    """Overlapping windows summed on the device (one read at the end, not one per window),
    against a window-by-window float64 reference; odd lengths, strides 1 to L."""
    from grassmann_flows.eval_wikitext import evaluate_sliding

    L, V = 8, 13
    g = torch.Generator().manual_seed(n_tokens)
    tokens = torch.randint(0, V, (n_tokens,), generator=g).numpy()
    model = torch.nn.Sequential(torch.nn.Embedding(V, 16), torch.nn.Linear(16, V)).double()
    got = evaluate_sliding(model, tokens, L, stride, batch_size, CPU, precision="fp32")
    total, count, ids = 0.0, 0, torch.from_numpy(tokens)
    for s in range(0, n_tokens - L, stride):
        nll = torch.nn.functional.cross_entropy(model(ids[s:s + L]), ids[s + 1:s + L + 1], reduction="none")
        keep = nll if s == 0 else nll[-stride:]
        total, count = total + keep.sum().item(), count + keep.numel()
    assert got["n_targets"] == count
    assert got["loss"] == pytest.approx(total / count, rel=1e-6)  # its cross-entropy runs in float32


# --- bf16 through the Triton kernels -----------------------------------------------------

def test_fused_model_bf16_step_against_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Grassmann LM's CUDA configuration, one training step: the fused Triton kernels
    (in the interpreter) under bf16 autocast, against the naive model in float64. Logits
    within bf16's tolerance, every parameter gradient within 5e-2 (bf16 operands through
    two layers, as in the GPU tests)."""
    pytest.importorskip("triton", reason="the fused kernels are written in Triton, which is not installed")
    from conftest import TOL, assert_close

    from grassmann_flows.models import build_model
    from grassmann_flows.ops.wedge_project import triton as kernels

    launches = []
    real = kernels._wedge_project
    monkeypatch.setattr(kernels, "_wedge_project", lambda *a: launches.append(a[0].dtype) or real(*a))
    small = dict(d_model=32, n_heads=2, d_ff=64, vocab_size=97, n_positions=24, reduced_dim=8, dropout=0.0)
    torch.manual_seed(0)
    fused = build_model("grassmann", mixer_impl="fused", n_layers=2, **small)
    reference = build_model("grassmann", mixer_impl="naive", n_layers=2, **small).double()
    reference.load_state_dict(fused.state_dict())
    ids = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = fused(ids[:, :-1])
    torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
    expected = reference(ids[:, :-1])
    torch.nn.functional.cross_entropy(expected.flatten(0, 1), ids[:, 1:].flatten()).backward()
    assert launches and set(launches) == {torch.bfloat16}
    assert_close("logits", logits, expected, TOL[torch.bfloat16])
    for (name, p), q in zip(fused.named_parameters(), reference.parameters()):
        assert_close(name, p.grad, q.grad, 5e-2)
