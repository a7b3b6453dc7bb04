"""speedrun.sh and its grid (src/grassmann_flows/grid/): planning, fail-fast checks, the queue,
a budget cut and its resume, and a new user's first run (hub data through a stub `datasets`,
a tiny local DistilBERT)."""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from grassmann_flows import grid
from grassmann_flows.data.sources import dataset_files
from grassmann_flows.models.snli_heads import save_tiny_backbone

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "data"
TINY = {"QUICK": "1", "SEEDS": "0", "LAYER_DEPTHS_OVERRIDE": "1", "SEQ_LENS": "16", "SNLI_LAYERS": "1",
        "EXTRA_ARGS": "--opt d_model=32 --opt d_ff=64 --opt n_heads=2"}


def speedrun(tmp_path: Path, *args: str, repo: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, "PYTHON": sys.executable, "OUT_ROOT": str(tmp_path / "outputs"),
            "CACHE_DIR": str(tmp_path / "cache"), "DATA_DIR": str(FIXTURE), "SNLI_MODE": "scratch",
            "CONTROLS": "0", **TINY}
    return subprocess.run(["bash", str(repo / "speedrun.sh"), *args], cwd=repo, env={**base, **env},
                          capture_output=True, text=True, timeout=900)


def plan(env: dict[str, str], models=("transformer", "grassmann"), datasets=("wikitext",)) -> list[grid.Run]:
    return grid.Planner(grid.Knobs.from_env(env)).speedrun(list(models), list(datasets))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- planning


def test_default_plan_three_seeds_names_carry_preset_and_lr_controls_after_main() -> None:
    runs = plan({})
    main = [r for r in runs if r.stage == "main"]
    controls = [r for r in runs if r.stage == "controls"]
    assert len(main) == 2 * 4 * 3 and len(controls) == 2 * 4 * 3  # models x (L, N) x seeds 0,1,2
    assert runs == main + controls  # the controls come after every main run
    assert {r.expect["seed"] for r in main} == {0, 1, 2}
    assert "grassmann_wikitext_L256_N12_paper_lr6e-4_s1" in {r.name for r in main}
    t = next(r for r in controls if r.model == "transformer")
    g = next(r for r in controls if r.model == "grassmann")
    assert t.name.endswith("_postln") and "block=postln" in t.args
    assert g.name.endswith("_noextra") and "extra_proj=none" in g.args
    assert plan({"CONTROLS": "0"}) == main


def test_quick_plan_is_the_default_grid_on_tiny_models() -> None:
    runs = plan({"QUICK": "1"}, datasets=("wikitext", "snli"))
    by_stage = collections.Counter(r.stage for r in runs)
    assert by_stage == {"main": 2, "controls": 2, "snli": 3}  # every kind of run of the default grid
    assert {r.name for r in runs} >= {"grassmann_wikitext_L32_N2_paper_lr6e-4_s0",
                                      "transformer_wikitext_L32_N2_paper_lr6e-4_s0_postln",
                                      "transformer_snli_distilbert_siamese_lr3e-4_s0"}
    for r in runs:
        assert "--quick" in r.args and r.args[r.args.index("--epochs") + 1] == "2"
        opts = [r.args[i + 1] for i, a in enumerate(r.args) if a in ("--opt", "--head-opt")]
        assert "d_model=16" in opts if r.task == "wikitext" else "d_model=32" in opts
    # the user's knobs win over QUICK's defaults, and a tiny backbone stands in for DistilBERT
    knobs = grid.Knobs.from_env({"QUICK": "1", "SEEDS": "0,1", "SEQ_LENS": "64"})
    assert knobs.seeds == [0, 1] and knobs.seq_lens == [64] and knobs.depths == [2]
    assert knobs.quick_backbone and knobs.distilbert_dir.endswith(grid.plan.QUICK_BACKBONE)
    assert not grid.Knobs.from_env({"QUICK": "1", "DISTILBERT_DIR": "/x"}).quick_backbone
    assert grid.Knobs.from_env({"QUICK": "1", "PARALLEL_RUNS": "2"}).runs_per_gpu is None


def test_lrs_go_into_names_commands_and_expectations() -> None:
    runs = plan({**TINY, "LRS": "3e-4,1e-3", "CONTROLS": "0"})
    assert {r.name for r in runs} == {f"{m}_wikitext_L16_N1_paper_lr{lr}_s0" for m in ("transformer", "grassmann")
                                      for lr in ("3e-4", "1e-3")}
    for r in runs:
        lr = float(r.args[r.args.index("--lr") + 1])
        assert r.expect["lr"] == lr and lr in (3e-4, 1e-3)


def test_distilbert_grid_adds_the_siamese_transformer_head() -> None:
    runs = plan({"SNLI_MODE": "distilbert", "SEEDS": "0"}, datasets=["snli"])
    heads = {r.name: r.expect.get("transformer_head") for r in runs}
    assert heads == {"transformer_snli_distilbert_lr3e-4_s0": "joint",
                     "transformer_snli_distilbert_siamese_lr3e-4_s0": "siamese",
                     "grassmann_snli_distilbert_lr3e-4_s0": None}  # the Grassmann head has one layout
    siamese = next(r for r in runs if r.expect.get("transformer_head") == "siamese")
    assert siamese.args[siamese.args.index("--transformer-head") + 1] == "siamese"
    assert all("--transformer-head" not in r.args for r in runs if r is not siamese)


def test_transformer_is_keyed_once_across_presets() -> None:
    runs = plan({"PRESET": "paper,preln_all_offsets,preln_per_layer", "SEEDS": "0", "CONTROLS": "0",
                 "LAYER_DEPTHS_OVERRIDE": "12", "SEQ_LENS": "256"})
    t = [r for r in runs if r.model == "transformer"]
    g = [r for r in runs if r.model == "grassmann"]
    # preln_per_layer trains the paper's Transformer; preln_all_offsets changes it (FFN
    # dropout 0.1, as its reproduction), so that one is keyed apart
    assert len(g) == 3 and sorted(r.expect["preset"] for r in t) == ["paper", "preln_all_offsets"]
    assert grid.transformer_preset("preln_per_layer", n_layers=12) == "paper"
    assert grid.transformer_preset("preln_all_offsets", n_layers=12) == "preln_all_offsets"
    # an option given to every run overrides each preset alike
    assert grid.transformer_preset("preln_all_offsets", n_layers=12, ffn_dropout=0.0) == "paper"


@pytest.mark.parametrize("env, message", [
    ({"SEEDS": "a,b"}, "SEEDS must be comma-separated integers"),
    ({"PRESET": "papr"}, "PRESET must be one or more of"),
    ({"EXTRA_ARGS": "--lr 1e-3"}, "EXTRA_ARGS may not set --lr"),
    ({"SNLI_MODE": "bert"}, "SNLI_MODE must be one of"),
    ({"PARALLEL_RUNS": "2", "RUNS_PER_GPU": "2"}, "PARALLEL_RUNS"),
])
def test_bad_knobs_are_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(grid.PreflightError, match=message):
        grid.Knobs.from_env(env)


# --------------------------------------------------------------------------- speedrun.sh


@pytest.mark.parametrize("args", [("gpt", "wikitext"), ("all", "imdb"), ("all", "snli", "fit"), ()])
def test_bad_arguments_print_usage_and_fail(tmp_path: Path, args: tuple[str, ...]) -> None:
    res = speedrun(tmp_path, *args)
    assert res.returncode == 2
    assert "error:" in res.stderr and "./speedrun.sh {grassmann|transformer|all}" in res.stderr
    assert not (tmp_path / "outputs").exists()  # stopped before any work


def test_missing_data_is_one_line_before_any_run(tmp_path: Path) -> None:
    log = tmp_path / "hub_calls.txt"
    res = speedrun(tmp_path, "all", "wikitext", DATA_DIR=str(tmp_path / "nowhere"),
                   PYTHONPATH=str(_stub_dir(tmp_path)), STUB_LOG=str(log))
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: wikitext data missing"), res.stderr
    # the DATA_DIR the user gave lacks the files: said so, and the hub is never asked
    assert "DATA_DIR" in err[0] and str(tmp_path / "nowhere") in err[0] and "datasets" not in err[0]
    assert not log.exists()
    assert "train" not in res.stdout and not (tmp_path / "outputs").exists()


def test_missing_data_in_the_train_module_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "grassmann_flows.train", "--model", "grassmann",
                          "--data-dir", str(tmp_path / "nowhere")], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": f"{_stub_dir(tmp_path, missing=True)}:{REPO / 'src'}"},
                         timeout=300)
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:")
    assert "--data-dir" in err[0] and "datasets" not in err[0]  # a directory given is never fetched into
    assert not (tmp_path / "outputs").exists()


def test_eval_without_checkpoint_fails_clearly(tmp_path: Path) -> None:
    res = speedrun(tmp_path, "all", "wikitext", "eval", SEEDS="0,1,2")
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "no trained run to evaluate: none of the 6 run(s)" in err[0], res.stderr


@pytest.mark.parametrize("where", ["local", "hub"])
def test_missing_distilbert_names_both_ways_out(tmp_path: Path, where: str) -> None:
    env = {"DISTILBERT_DIR": str(tmp_path / "none")} if where == "local" else \
        {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "QUICK": "0"}  # offline with an empty cache
    res = speedrun(tmp_path, "all", "snli", SNLI_MODE="distilbert", **env)
    assert res.returncode == 2
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "SNLI_MODE=scratch" in err[0] and "DISTILBERT_DIR" in err[0], res.stderr


def test_quick_needs_no_distilbert_download(tmp_path: Path, cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline, with an empty Hugging Face cache
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    knobs = grid.Knobs.from_env({"QUICK": "1", "DATA_DIR": str(FIXTURE), "OUT_ROOT": str(tmp_path)})
    runs = grid.Planner(knobs).speedrun(["transformer", "grassmann"], ["snli"])
    grid.preflight(runs, knobs, "both")  # makes QUICK's tiny backbone in the cache, then checks it
    assert (Path(knobs.distilbert_dir) / "config.json").is_file()
    assert all(r.args[r.args.index("--backbone") + 1] == knobs.distilbert_dir for r in runs)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path: Path, cache: None) -> None:
    knobs = grid.Knobs.from_env({**TINY, "DATA_DIR": str(FIXTURE), "OUT_ROOT": str(tmp_path), "RESUME": "1",
                                 "CONTROLS": "0"})
    runs = grid.Planner(knobs).speedrun(["grassmann"], ["wikitext"])
    run_dir = tmp_path / "2026-01-01_00-00-00" / runs[0].name
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(b"")
    (run_dir / "config.json").write_text(json.dumps({"summary": {**runs[0].expect, "lr": 1e-3}}))
    with pytest.raises(grid.PreflightError, match=r"RESUME=1: .* another configuration: lr \(checkpoint 0.001"):
        grid.preflight(runs, knobs, "both")


# --------------------------------------------------------------------------- the queue


def _queue(tmp_path: Path, env: dict[str, str], runs_per_gpu: int = 1, **kwargs) -> tuple[grid.Queue, list[grid.Run]]:
    knobs = grid.Knobs.from_env({"DATA_DIR": str(FIXTURE), "OUT_ROOT": str(tmp_path / "outputs"), "CONTROLS": "0",
                                 **TINY, **env})
    runs = grid.Planner(knobs).speedrun(["transformer", "grassmann"], ["wikitext"])
    grid.preflight(runs, knobs, "both")
    slots = [None] * runs_per_gpu
    return grid.Queue(knobs, slots, "both", tmp_path / "outputs" / "stamp", sys.executable, **kwargs), runs


def test_queue_with_two_runs_at_once(tmp_path: Path, cache: None) -> None:
    queue, runs = _queue(tmp_path, {}, runs_per_gpu=2)
    outcomes = queue.run(runs)
    assert [o.status for o in outcomes] == ["completed", "completed"], outcomes
    for out in outcomes:
        run_dir = Path(out.out_dir)
        assert (run_dir / "train.log").is_file() and (run_dir / "eval.log").is_file()  # one log per run
        assert json.loads((run_dir / "eval_test.json").read_text())["split"] == "test"
        assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    # both trained at once: each started before the other's training ended
    assert max(o.started for o in outcomes) < min(o.started + o.train_s for o in outcomes)
    expected = os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache" / "inductor"))
    assert queue._env["TORCHINDUCTOR_CACHE_DIR"] == expected  # one compilation cache for all


def test_budget_cut_leaves_last_pt_and_marker_then_resumes(tmp_path: Path, cache: None) -> None:
    env = {"EPOCHS": "400", "SEEDS": "0"}

    def first_step_logged() -> bool:  # stop as soon as the Grassmann run has taken a step
        metrics = tmp_path / "outputs" / "stamp" / runs[0].name / "metrics.jsonl"
        return metrics.is_file() and '"kind": "step"' in metrics.read_text()

    queue, runs = _queue(tmp_path, env, stop_when=first_step_logged)
    runs = [r for r in runs if r.model == "grassmann"]
    (outcome,) = queue.run(runs)
    run_dir = Path(outcome.out_dir)
    assert outcome.status == "cut" and (run_dir / "last.pt").is_file()
    assert "(continue with RESUME=1)" in (run_dir / "train.log").read_text()  # the user's knob, not --resume
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and "SIGTERM" in results["stop_reason"]

    def last_step() -> dict:  # the stop may come after an epoch's evaluation record
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r for r in records if r["kind"] == "step"][-1]

    steps = results_steps = last_step()["step"]
    # RESUME=1 continues the same directory from last.pt (here for three more steps)
    extra = f"{TINY['EXTRA_ARGS']} --stop-after-steps {steps + 3}"
    queue, again = _queue(tmp_path, {**env, "RESUME": "1", "EXTRA_ARGS": extra})
    (outcome,) = queue.run([r for r in again if r.model == "grassmann"])
    assert outcome.status == "completed" and Path(outcome.out_dir) == run_dir
    assert f"resumed from {run_dir / 'last.pt'}" in (run_dir / "train.log").read_text()
    assert last_step()["step"] == results_steps + 3


# --------------------------------------------------------------------------- a new user's first run


def _stub_dir(tmp_path: Path, missing: bool = False) -> Path:
    """A `datasets` stand-in serving the fixture rows (or, missing=True, one that fails to import)."""
    stub = tmp_path / "stub"
    (stub / "datasets").mkdir(parents=True, exist_ok=True)
    if missing:
        (stub / "datasets" / "__init__.py").write_text("raise ImportError('no datasets here')\n")
        return stub
    (stub / "datasets" / "__init__.py").write_text(f'''
import gzip, json, os
from pathlib import Path
from grassmann_flows.data.sources import wikitext_text_to_rows
FIXTURE = Path({str(FIXTURE)!r})

def load_dataset(*names):
    with open(os.environ["STUB_LOG"], "a") as f:
        f.write(" ".join(names) + "\\n")
    if names[0] == "Salesforce/wikitext":
        return {{s: {{"text": wikitext_text_to_rows((FIXTURE / "wikitext-2-raw-v1" / f"{{s}}.txt").read_text())}}
                for s in ("train", "validation", "test")}}
    out = {{}}
    for s in ("train", "validation", "test"):
        rows = [json.loads(l) for l in gzip.open(FIXTURE / "snli_1.0" / f"{{s}}.jsonl.gz", "rt")]
        out[s] = {{k: [r[k] for r in rows] for k in ("premise", "hypothesis", "label")}}
    return out
''')
    return stub


def test_new_user_first_run_all_all_with_defaults(tmp_path: Path) -> None:
    """speedrun.sh all all in a fresh copy with the defaults: data from the hub (a stub), SNLI on a
    local DistilBERT (tiny), the controls, two runs at once. Only the sizes are cut (QUICK=1 and the
    tiny knobs), to keep the suite fast."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for item in ("src", "scripts", "speedrun.sh", "pyproject.toml", "results"):  # results: the analysis reads it
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy)(REPO / item, repo / item)
    log = tmp_path / "hub_calls.txt"
    hub = socket.create_server(("127.0.0.1", 0))  # the hub's address answers (the stub serves the data)
    env = {**os.environ, **TINY, "PYTHON": sys.executable, "PYTHONPATH": str(_stub_dir(tmp_path)),
           "STUB_LOG": str(log), "DISTILBERT_DIR": str(save_tiny_backbone(tmp_path / "distilbert")),
           "RUNS_PER_GPU": "2", "HF_ENDPOINT": f"http://127.0.0.1:{hub.getsockname()[1]}"}
    for key in ("DATA_DIR", "OUT_ROOT", "CACHE_DIR", "SNLI_MODE", "PRESET", "CONTROLS", "LRS"):
        env.pop(key, None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["bash", str(repo / "speedrun.sh"), *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        return res

    run("all", "all")
    assert sorted(log.read_text().split("\n")[:-1]) == ["Salesforce/wikitext wikitext-2-raw-v1", "stanfordnlp/snli"]
    for task in ("wikitext", "snli"):  # the local layout was written
        assert all(p.is_file() for p in dataset_files(task, repo / "data").values())
    (stamp,) = (repo / "outputs").iterdir()
    names = {p.name for p in stamp.iterdir() if (p / "config.json").is_file()}  # the runs (not images/)
    assert names == {"transformer_wikitext_L16_N1_paper_lr6e-4_s0", "grassmann_wikitext_L16_N1_paper_lr6e-4_s0",
                     "transformer_wikitext_L16_N1_paper_lr6e-4_s0_postln",
                     "grassmann_wikitext_L16_N1_paper_lr6e-4_s0_noextra",
                     "transformer_snli_distilbert_lr3e-4_s0", "transformer_snli_distilbert_siamese_lr3e-4_s0",
                     "grassmann_snli_distilbert_lr3e-4_s0"}
    for name in names:
        results = json.loads((stamp / name / "results.json").read_text())
        assert results["status"] == "completed" and results["lr"] in (6e-4, 3e-4)
        assert results["quick"] is True  # a smoke run, never compared with real runs
        assert json.loads((stamp / name / "config.json").read_text())["summary"]["quick"] is True
        assert json.loads((stamp / name / "eval_test.json").read_text())["split"] == "test"
    assert (stamp / "queue.json").is_file()
    # QUICK ends with the analysis a user runs next: its tables and figures read every run
    analysis = (stamp / "analysis.md").read_text()
    assert all(name in analysis for name in names if "wikitext" in name)
    assert list((stamp / "images").glob("*.png"))
    # a second run is offline: the hub is not asked again; eval mode finds every checkpoint and
    # needs only the test split
    for task in ("wikitext", "snli"):
        for split in ("train", "validation"):
            dataset_files(task, repo / "data")[split].unlink()
    res = run("grassmann", "all", "eval")
    assert len(log.read_text().splitlines()) == 2
    plan = [line for line in res.stdout.splitlines() if line.startswith("    ")]
    assert plan and all("steps" not in line and line.endswith("its newest best.pt") for line in plan)
    for name in names:
        if name.startswith("grassmann"):
            assert f"evaluating the newest checkpoint of {name}" in res.stdout
            eval_log = (stamp / name / "eval.log").read_text()
            if "wikitext" in name:  # the log and eval_test.json count the same targets
                n = json.loads((stamp / name / "eval_test.json").read_text())["blocks"]["n_targets"]
                assert f"n_targets={n}" in eval_log
    # the last line names the folder the evaluated runs are in (no new one is made)
    assert f"outputs under {stamp.relative_to(repo)} (" in res.stdout.splitlines()[-1]  # OUT_ROOT: outputs
    assert sorted((repo / "outputs").iterdir()) == [stamp]
    hub.close()


def test_on_gpus_a_shape_compiles_once_before_its_other_runs_start(tmp_path: Path) -> None:
    knobs = grid.Knobs.from_env({**TINY, "SEEDS": "0,1", "CONTROLS": "0"})
    runs = grid.Planner(knobs).speedrun(["transformer", "grassmann"], ["wikitext"])  # T0 G0 T1 G1
    queue = grid.Queue(knobs, ["0", "0"], "both", tmp_path, sys.executable)
    todo = collections.deque(runs)
    assert queue._next(todo, "0") is runs[0] and queue._next(todo, "0") is runs[1]
    assert queue._next(todo, "0") is None  # seed 1 of both shapes waits for their first compile
    queue._warm.add(runs[1].compile_key)
    assert queue._next(todo, "0") is runs[3]  # the Grassmann shape is compiled: its next run may start
    cpu = grid.Queue(knobs, [None, None], "both", tmp_path, sys.executable)
    todo = collections.deque(runs)
    assert [cpu._next(todo, None) for _ in runs] == runs  # nothing compiles on the CPU: plain order


def test_a_run_cut_before_its_first_checkpoint_is_marked(tmp_path: Path) -> None:
    (run,) = plan({**TINY, "CONTROLS": "0"}, models=("grassmann",))
    grid._mark_cut(run, tmp_path, "the time budget ran out")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "interrupted" and "before the first checkpoint" in results["stop_reason"]
    assert (results["task"], results["model"], results["lr"]) == ("wikitext", "grassmann", 6e-4)  # analysable
    (tmp_path / "results.json").write_text('{"status": "completed"}')
    grid._mark_cut(run, tmp_path, "again")  # a results.json the run wrote itself is kept
    assert json.loads((tmp_path / "results.json").read_text()) == {"status": "completed"}


def test_a_bad_extra_flag_is_one_line_before_any_data_is_read(tmp_path: Path) -> None:
    res = speedrun(tmp_path, "grassmann", "wikitext", EXTRA_ARGS="--no-such-flag 1",
                   DATA_DIR=str(tmp_path / "nowhere"))
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(err) == 1, res.stderr
    assert "unrecognized arguments: --no-such-flag 1" in err[0] and "EXTRA_ARGS" in err[0]
