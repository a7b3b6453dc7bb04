"""Checks that need a CUDA GPU: the compiled Triton kernels, torch.compile, DDP over nccl.

Every test here is marked `gpu`: without CUDA they are skipped with the reason shown;
`pytest -m gpu` runs only them. They are sized for a short GPU session (seconds each,
the torch.compile ones a few tens of seconds). The kernels run their one pinned config
(the default; only the benchmark autotunes), so no time goes to tuning. docs/cuda-paths.md
lists which CUDA path each test covers.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TOL, assert_close, check_features_against_naive, check_wedge_project, compare_models

from grassmann_flows.models import build_model
from grassmann_flows.models.config import MixerConfig
from grassmann_flows.models.presets import PRESETS
from grassmann_flows.ops.wedge_project import wedge_project_reference

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda"
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.bfloat16, id="bfloat16")]


@pytest.fixture(scope="module")
def kernels():
    """The Triton module, compiled (not interpreted): conftest sets TRITON_INTERPRET only without CUDA."""
    pytest.importorskip("triton", reason="the fused kernels are written in Triton, which is not installed")
    from grassmann_flows.ops.wedge_project import triton as kernels

    assert not kernels.INTERPRET, "TRITON_INTERPRET is set: the kernels would not be compiled"
    return kernels


# ----------------------------------------------------------------- the op on CUDA

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("N", "r", "d"),
    [pytest.param(*c, id="N{}-r{}-d{}".format(*c)) for c in [(1, 8, 48), (7, 8, 48), (257, 8, 48), (1031, 5, 33),
                                                           (39, 32, 256)]],
)
def test_fused_against_reference(kernels, N: int, r: int, d: int, dtype: torch.dtype) -> None:
    """Forward and the u, w, weight gradients against float64 Plücker coordinates; odd N and r."""
    check_wedge_project(kernels.wedge_project_fused, (N,), r, d, dtype, DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_mixer_features_t_below_delta(kernels, dtype: torch.dtype) -> None:
    """The fused feature path against the naive one: positions with no or only some valid offsets."""
    tol = 1e-4 if dtype == torch.float32 else 5e-2  # float32 norms; bf16 operands of the projection
    check_features_against_naive(kernels.wedge_project_fused, MixerConfig(reduced_dim=8), dtype, DEVICE, tol)


def test_fused_bf16_paper_size_several_splits(kernels) -> None:
    """bf16 at the paper's r = 32, d = 256 and N = 4,999: three token splits, ragged blocks."""
    N = 4999
    assert kernels.num_splits(N) == 3
    check_wedge_project(kernels.wedge_project_fused, (N,), 32, 256, torch.bfloat16, DEVICE)


def test_fused_offsets_past_2_31(kernels) -> None:
    """N * d > 2**31: offsets into y and dy need 64 bits. Checked on the last tokens.

    dy is zero except on the last K tokens, so dweight is the reference's over those alone.
    """
    r, d, K = 32, 256, 4096
    N = 2**31 // d + 4099  # odd, and the last K tokens all lie past element 2**31 of y
    need = N * (2 * d + 4 * r) * 2 * 1.5  # y and dy, u, w, du, dw in bf16, with headroom
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs about {need / 2**30:.0f} GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    g = torch.Generator(device=DEVICE).manual_seed(0)
    u, w = (torch.randn(N, r, device=DEVICE, dtype=torch.bfloat16, generator=g).requires_grad_() for _ in "uw")
    weight = (torch.randn(d, r * (r - 1) // 2, device=DEVICE, generator=g) / r).to(torch.bfloat16).requires_grad_()
    dy = torch.zeros(N, d, device=DEVICE, dtype=torch.bfloat16)
    dy[-K:] = torch.randn(K, d, device=DEVICE, dtype=torch.bfloat16, generator=g)
    y = kernels.wedge_project_fused(u, w, weight)
    du, dw, dweight = torch.autograd.grad(y, (u, w, weight), dy)
    tail = [t[-K:].detach().double().requires_grad_() for t in (u, w)]
    ref_weight = weight.detach().double().requires_grad_()
    y_ref = wedge_project_reference(*tail, ref_weight)
    grads_ref = torch.autograd.grad(y_ref, (*tail, ref_weight), dy[-K:].double())
    assert_close("y", y[-K:], y_ref, TOL[torch.bfloat16])
    for name, got, ref in zip(("du", "dw", "dweight"), (du[-K:], dw[-K:], dweight), grads_ref):
        assert_close(name, got, ref, TOL[torch.bfloat16])
    assert not du[:-K].any() and not dw[:-K].any()


# -------------------------------------------------------------- the model on CUDA

SMALL = dict(d_model=32, n_heads=2, d_ff=64, vocab_size=97, n_positions=24, reduced_dim=8, dropout=0.0)


def ids_batch(vocab: int = SMALL["vocab_size"]) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(2)).to(DEVICE)


@pytest.mark.parametrize(("dtype", "tol", "grad_tol"), [
    pytest.param(torch.float64, 1e-10, 1e-8, id="float64"),
    pytest.param(torch.float32, 1e-4, 1e-4, id="float32"),
])
def test_model_fused_vs_fast(kernels, dtype: torch.dtype, tol: float, grad_tol: float) -> None:
    """GrassmannLM mixer_impl='fused' against 'fast': logits and every parameter gradient."""
    fused = build_model("grassmann", mixer_impl="fused", n_layers=2, **SMALL).to(DEVICE, dtype)
    fast = build_model("grassmann", mixer_impl="fast", n_layers=2, **SMALL).to(DEVICE, dtype)
    fast.load_state_dict(fused.state_dict())
    assert {blk.mixer.mixer_impl for blk in fused.backbone.blocks} == {"fused"}
    compare_models(fused, fast, ids_batch(), tol, grad_tol)


def preset_model(kind: str, preset: str, **options) -> torch.nn.Module:
    n_layers = 6 if preset == "preln_per_layer" else 2  # per_layer spreads six offsets over six layers
    opts = dict(SMALL) if kind == "grassmann" else {k: v for k, v in SMALL.items() if k != "reduced_dim"}
    return build_model(kind, preset, n_layers=n_layers, **opts, **options).to(DEVICE)


@pytest.mark.parametrize(("kind", "preset"), [
    pytest.param(kind, preset, id=f"{kind}-{preset}") for kind in ("transformer", "grassmann") for preset in PRESETS
])
def test_preset_compiles_fullgraph_and_trains(kind: str, preset: str) -> None:
    """torch.compile(fullgraph=True) (a graph break raises), then one bf16 training step on CUDA.

    The Grassmann models run the fused kernels, the path a GPU training run takes.
    """
    from grassmann_flows.training import autocast

    options = {"mixer_impl": "fused"} if kind == "grassmann" else {}
    if kind == "grassmann":
        pytest.importorskip("triton", reason="the fused kernels are written in Triton, which is not installed")
    torch._dynamo.reset()
    model = preset_model(kind, preset, **options).train()
    before = [p.detach().clone() for p in model.parameters()]
    step = torch.compile(model, fullgraph=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    ids = ids_batch()
    with autocast(torch.device(DEVICE), "auto"):
        logits = step(ids)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.roll(-1, 1).flatten())
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_fused_model_compiled_matches_eager(kernels) -> None:
    """The fused model under torch.compile(fullgraph=True), forward and backward, against eager."""
    torch._dynamo.reset()
    eager = build_model("grassmann", mixer_impl="fused", n_layers=2, **SMALL).to(DEVICE)
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True)
    compare_models(compiled, eager, ids_batch(), tol=1e-4)


# ------------------------------------------------------------------- DDP over nccl

def test_ddp_two_processes_nccl(tmp_path: Path) -> None:
    """One short training run on two GPUs (torchrun, nccl, the fused kernels)."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two CUDA GPUs, found {torch.cuda.device_count()}")
    args = [
        "--model", "grassmann", "--preset", "paper", "--n-layers", "1", "--mixer-impl", "fused",
        "--opt", "d_model=32", "--opt", "d_ff=64", "--opt", "n_heads=2", "--opt", "reduced_dim=8",
        "--data-dir", str(REPO / "tests" / "fixtures" / "data"), "--batch-size", "4", "--warmup-steps", "1",
        "--lr", "1e-3", "--eval-max-batches", "2", "--seq-len", "16", "--epochs", "1",
        "--max-steps-per-epoch", "2", "--device", "cuda", "--compile", "off",
        "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "run"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "grassmann_flows.train", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["world_size"] == 2 and results["status"] == "completed"


# ------------------------------------------- paths only CUDA takes (docs/cuda-paths.md)

FIXTURE = REPO / "tests" / "fixtures" / "data"
TINY_LM = ["--model", "grassmann", "--preset", "paper", "--n-layers", "1", "--mixer-impl", "fused",
           "--opt", "d_model=32", "--opt", "d_ff=64", "--opt", "n_heads=2", "--opt", "reduced_dim=8",
           "--data-dir", str(FIXTURE), "--batch-size", "4", "--warmup-steps", "1", "--lr", "1e-3",
           "--eval-max-batches", "2", "--seq-len", "16", "--log-every", "1", "--device", DEVICE]


def test_pinned_kernel_config_gives_the_same_gradients_every_call(kernels) -> None:
    """One fixed config per kernel (no autotuning outside the benchmark): the same inputs give
    bit-identical outputs and gradients, call after call (the dA split sums add no atomics)."""
    from conftest import wedge_inputs

    u, w, weight, dy = wedge_inputs((3, 1001), 32, 256, torch.bfloat16, DEVICE)
    first = [kernels.wedge_project_fused(u, w, weight), *torch.autograd.grad(
        kernels.wedge_project_fused(u, w, weight), (u, w, weight), dy)]
    again = [kernels.wedge_project_fused(u, w, weight), *torch.autograd.grad(
        kernels.wedge_project_fused(u, w, weight), (u, w, weight), dy)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_train_stop_resume_eval_on_cuda(kernels, tmp_path: Path) -> None:
    """The CLI path of a GPU run: fused kernels, bf16 autocast (precision stored resolved),
    fused AdamW, pinned host-to-device copies, CUDA-synchronised step timing; stopped after 3
    steps, resumed from last.pt (read to the CPU, the GPU's RNG restored), evaluated.

    What resume promises on CUDA: the same run within tolerance, not bit-identical (several
    backward passes add with atomics, in no fixed order); on the CPU it is bit-identical
    (tests/test_reliability.py)."""
    from grassmann_flows import eval_wikitext, train
    from grassmann_flows.utils.checkpoint import load_checkpoint

    cache = ["--cache-dir", str(tmp_path / "cache")]
    steps = ["--epochs", "1", "--max-steps-per-epoch", "6", "--compile", "off"]
    full, run = tmp_path / "full", tmp_path / "run"
    assert train.main([*TINY_LM, *cache, *steps, "--out-dir", str(full)]) == 0
    assert train.main([*TINY_LM, *cache, *steps, "--out-dir", str(run), "--stop-after-steps", "3"]) == 0
    assert train.main([*TINY_LM, *cache, *steps, "--out-dir", str(run), "--resume"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["precision"] == "bf16"
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["rng"][0]["cuda"].device.type == "cpu" and ckpt["meta"]["state"]["global_step"] == 6
    a, b = load_checkpoint(full / "last.pt")["model"], ckpt["model"]
    for k in a:
        assert_close(k, b[k].double(), a[k].double(), 1e-3)
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["train_time_s"] > 0 and results["peak_mem_mb"] > 0
    assert results["env"]["gpu"] == torch.cuda.get_device_name(0) and results["device"] == "cuda"
    assert eval_wikitext.main([str(run), *cache, "--batch-size", "4", "--max-batches", "2"]) == 0
    evaluated = json.loads((run / "eval_test.json").read_text())
    assert evaluated["precision"] == "bf16"
    assert evaluated["blocks"]["loss"] == pytest.approx(results["test"]["loss"], rel=1e-4)


def test_compiled_training_run_on_cuda(kernels, tmp_path: Path) -> None:
    """`fit` with torch.compile on CUDA (the default there) around the fused kernels: two steps."""
    from grassmann_flows import train

    run = tmp_path / "run"
    torch._dynamo.reset()
    assert train.main([*TINY_LM, "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(run), "--epochs", "1",
                       "--max-steps-per-epoch", "2", "--compile", "auto"]) == 0
    assert json.loads((run / "results.json").read_text())["status"] == "completed"


def test_compiled_distilbert_grassmann_head_every_width_on_cuda() -> None:
    """The DistilBERT Grassmann head, compiled by inductor on CUDA, over many batch widths
    within a recompile limit of 2, against eager."""
    from grassmann_flows.models.snli_heads import build_head

    torch._dynamo.reset()
    head = build_head("grassmann", in_dim=48, d_model=32, reduced_dim=8, d_ff=64).to(DEVICE).eval()
    compiled = torch.compile(head, fullgraph=True)
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    g = torch.Generator().manual_seed(0)
    with torch._dynamo.config.patch({limit: 2, "fail_on_recompile_limit_hit": True}), torch.no_grad():
        for L in (5, 9, 12, 17, 23, 31, 48):
            x, y = (torch.randn(2, n, 48, generator=g).to(DEVICE) for n in (L, L + 1))
            xm, ym = (torch.ones(2, n, dtype=torch.long, device=DEVICE) for n in (L, L + 1))
            xm[1, L // 2:] = 0
            assert_close(f"L={L}", compiled(x, xm, y, ym), head(x, xm, y, ym), 1e-4)


def test_pinned_copies_arrive_intact() -> None:
    """to_device pins host tensors and copies without blocking; the values arrive unchanged."""
    from grassmann_flows.training import gather_batch, to_device

    t = torch.arange(1000, dtype=torch.long).view(10, 100)
    assert torch.equal(to_device(t, torch.device(DEVICE)).cpu(), t)
    x, y = gather_batch([(t[i], -t[i]) for i in range(10)], [3, 1], torch.device(DEVICE))
    assert torch.equal(x.cpu(), t[[3, 1]]) and torch.equal(y.cpu(), -t[[3, 1]])


def test_out_of_gpu_memory_is_one_line(capsys: pytest.CaptureFixture) -> None:
    from grassmann_flows.runs import OOM_LINE, cli

    assert cli(lambda argv: int(torch.empty(2**50, device=DEVICE).sum()))([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(OOM_LINE)


def test_free_gpu_memory_as_nvidia_smi_and_torch_see_it() -> None:
    """The queue's free-memory reading (nvidia-smi, by index or UUID) against torch's."""
    from grassmann_flows.grid.queue import _gpu_free_gib, _visible_free_gib
    from grassmann_flows.utils.env import nvidia_driver

    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"nvidia-smi is not usable here: {e}")
    free = _gpu_free_gib()
    assert len(free) == torch.cuda.device_count()
    assert abs(free[0] - torch.cuda.mem_get_info(0)[0] / 2**30) < 2  # other processes may allocate meanwhile
    index, uuid, _ = (c.strip() for c in smi.splitlines()[0].split(","))
    assert _visible_free_gib(smi, uuid) == _visible_free_gib(smi, index)
    assert nvidia_driver() is not None  # the driver version every result records


def test_benchmark_quick_on_cuda(tmp_path: Path) -> None:
    """The benchmark's CUDA path: CUDA-event timing, the kernels autotuned (the benchmark
    alone autotunes), the fused mixer; --quick sizes, mixer part only."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GRASSMANN_FLOWS_KERNEL_CONFIG")}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick", "--device", DEVICE,
                           "--only", "mixer", "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (result,) = [json.loads(f.read_text()) for f in tmp_path.glob("*.json")]
    fused = [row for row in result["mixer"] if row["layer"] == "grassmann-fused"]
    assert fused and all("error" not in row and row["ms"] > 0 for row in fused), fused


def test_grid_packs_two_runs_on_one_gpu(tmp_path: Path) -> None:
    """RUNS_PER_GPU=2: two training processes share GPU 0 and both complete."""
    from grassmann_flows import grid

    knobs = grid.Knobs.from_env({"DATA_DIR": str(FIXTURE), "OUT_ROOT": str(tmp_path / "outputs"), "CONTROLS": "0",
                                 "QUICK": "1", "SEEDS": "0", "LAYER_DEPTHS_OVERRIDE": "1", "SEQ_LENS": "16",
                                 "EXTRA_ARGS": "--opt d_model=32 --opt d_ff=64 --opt n_heads=2 --compile off"})
    runs = grid.Planner(knobs).speedrun(["transformer", "grassmann"], ["wikitext"])
    grid.preflight(runs, knobs, "train")
    queue = grid.Queue(knobs, ["0", "0"], "train", tmp_path / "outputs" / "stamp", sys.executable)
    outcomes = queue.run(runs)
    assert [o.status for o in outcomes] == ["completed", "completed"], outcomes
    assert max(o.started for o in outcomes) < min(o.started + o.train_s for o in outcomes)  # at once
