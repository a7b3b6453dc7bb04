"""Preflight and estimates: every precondition of a grid checked once before its first run,
and each run's time estimated from one measured step per model shape."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ..data.sources import SPLITS, DataUnavailableError, ensure_dataset, resolve_data_dir
from ..runs import default_cache_dir
from ..spec import RunSpec, spec_from_args
from .plan import Knobs, PreflightError, Run

# --------------------------------------------------------------------------- preflight


def newest(out_root: Path, name: str, filename: str) -> Path | None:
    """The newest <out_root>/*/<name>/<filename> (timestamped directories sort by name)."""
    found = sorted(out_root.glob(f"*/{name}/{filename}"))
    return found[-1] if found else None


def run_spec(run: Run) -> RunSpec:
    """`run`'s spec as its training module reads `run.args`; a bad flag raises PreflightError."""
    from .. import train, train_snli

    parser = (train if run.task == "wikitext" else train_snli).parser()

    def error(message: str) -> None:
        raise PreflightError(f"{run.name}: {message} (check EXTRA_ARGS)")

    parser.error = error  # type: ignore[method-assign]
    try:
        return spec_from_args(run.task, parser.parse_args(run.args))
    except ValueError as e:
        raise PreflightError(f"{run.name}: {e}") from None


def preflight(runs: list[Run], knobs: Knobs, mode: str) -> None:
    """Check once what every run needs; fill in each run's step counts. Raises PreflightError.

    Arguments (each run's command parses and its model configuration resolves), the data
    (fetched once from the hub if missing and possible), the tokenizer, the DistilBERT
    weights, and with RESUME the configuration of each checkpoint to continue.
    """
    from ..data.snli import load_snli_splits
    from ..data.tokenizers import load_tokenizer
    from ..data.wikitext import load_lm_splits

    specs = {run.name: run_spec(run) for run in runs}  # the arguments first: they cost nothing
    if mode == "eval":
        untrained = [r.name for r in runs if newest(knobs.out_root, r.name, "best.pt") is None]
        if len(untrained) == len(runs):
            raise PreflightError(f"no trained run to evaluate: none of the {len(runs)} run(s) of this grid has a "
                                 f"{knobs.out_root}/*/<run>/best.pt (e.g. {untrained[0]}); train them first "
                                 "(mode train or both)")
    data_dir = resolve_data_dir(knobs.data_dir)
    try:
        for task in dict.fromkeys(r.task for r in runs):  # evaluation reads the test split alone
            ensure_dataset(task, data_dir, ("test",) if mode == "eval" else SPLITS, fetch=not knobs.data_dir)
    except DataUnavailableError as e:
        raise PreflightError(str(e)) from None
    if any(r.snli_mode == "distilbert" for r in runs):
        if knobs.quick_backbone and not Path(knobs.distilbert_dir or "").is_dir():
            from ..models.snli_heads import save_tiny_backbone

            save_tiny_backbone(Path(knobs.distilbert_dir or ""))
        _check_backbone(knobs.distilbert_dir)
    cache = default_cache_dir()
    sizes: dict[tuple, tuple[int, int]] = {}  # data config -> (train items, validation items)
    for run in runs:
        spec = specs[run.name]
        try:
            if spec.snli_mode == "distilbert":
                load_tokenizer(spec.data.tokenizer)
            else:
                spec.model_config()  # resolves the preset and options; loads the tokenizer
            if mode == "eval":  # no training: no steps to count, no training split to read
                continue
            key = (run.task, json.dumps(asdict(spec.data), sort_keys=True))
            if key not in sizes:
                # tokenised once here, so the runs find the cache
                load = load_lm_splits if run.task == "wikitext" else load_snli_splits
                splits = load(data_dir, spec.data, cache)
                sizes[key] = (len(splits["train"]), len(splits["validation"]))
        except (ValueError, DataUnavailableError) as e:
            raise PreflightError(f"{run.name}: {e}") from None
        train_cfg, batch = spec.train, spec.train.batch_size
        n_train, n_val = sizes[key]
        per_epoch = n_train // batch
        if train_cfg.max_steps_per_epoch:
            per_epoch = min(per_epoch, train_cfg.max_steps_per_epoch)
        if per_epoch == 0:
            raise PreflightError(f"{run.name}: the {run.task} training split has fewer than batch_size={batch} items")
        val = -(-n_val // (train_cfg.eval_batch_size or batch))
        run.epochs, run.steps = train_cfg.epochs, train_cfg.epochs * per_epoch
        run.val_batches = min(val, train_cfg.eval_max_batches) if train_cfg.eval_max_batches else val
    if knobs.resume and mode != "eval":
        for run in runs:
            last = newest(knobs.out_root, run.name, "last.pt")
            config = last.parent / "config.json" if last else None
            if config and config.is_file():
                summary = json.loads(config.read_text()).get("summary", {})
                differ = [f"{k} (checkpoint {summary.get(k)!r}, now {v!r})" for k, v in run.expect.items()
                          if summary.get(k) != v]
                if differ:
                    raise PreflightError(f"RESUME=1: {last} is from another configuration: " + "; ".join(differ))


def _check_backbone(distilbert_dir: str | None) -> None:
    """SNLI_MODE=distilbert needs the DistilBERT weights: DISTILBERT_DIR, the HF cache or the hub."""
    from ..models.snli_heads import DEFAULT_BACKBONE, BackboneUnavailableError, load_backbone

    try:
        load_backbone(distilbert_dir or DEFAULT_BACKBONE)
    except BackboneUnavailableError:
        where = f"DISTILBERT_DIR={distilbert_dir} holds no usable copy" if distilbert_dir else \
            f"{DEFAULT_BACKBONE} is neither in the Hugging Face cache nor downloadable here"
        raise PreflightError(f"the DistilBERT weights that SNLI_MODE=distilbert needs are unavailable ({where}): "
                             "set DISTILBERT_DIR to a local copy, or SNLI_MODE=scratch for the from-scratch "
                             "encoders") from None


# --------------------------------------------------------------------------- estimates


def measure_step(run: Run, device: Any) -> float:
    """Seconds of one training step (forward, backward, AdamW) of `run`'s model, eager,
    on random inputs: the second of two steps, so allocation is not counted."""
    import torch

    from ..training import autocast

    spec = run_spec(run)
    torch.manual_seed(0)
    model = spec.build().to(device)
    B, L = spec.train.batch_size, spec.seq_len
    if run.task == "wikitext":
        from ..train import chunked_head, lm_loss

        ids = torch.randint(0, model.cfg.vocab_size, (B, L + 1), device=device)
        chunked = chunked_head(spec.train.head_loss, device)  # the loss the run itself computes
        loss_of = lambda: lm_loss(model, ids[:, :-1], ids[:, 1:], chunked)  # noqa: E731
    else:
        ids = torch.randint(0, model.cfg.vocab_size, (B, L), device=device)
        mask, labels = torch.ones_like(ids), torch.randint(0, 3, (B,), device=device)
        loss_of = lambda: torch.nn.functional.cross_entropy(model(ids, mask).float(), labels)  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seconds = 0.0
    for _ in range(2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, "auto"):
            loss = loss_of()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    del model, opt
    return seconds


def estimate(runs: list[Run], keep_going: Callable[[], bool] = lambda: True) -> dict[str, float | None]:
    """Run name -> estimated seconds: one measured step x (training steps + validation batches / 3,
    a forward pass being about a third of a step). Compilation and start-up are not included;
    DistilBERT heads (feature cache first) are not estimated, nor shapes left when
    `keep_going()` turns false (the time set aside for estimating is over).

    On CUDA the steps run in a child process, whose CUDA context ends with it: the queue's
    parent must not hold one (hundreds of MiB on a GPU its runs share) for the whole grid.
    """
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = {run.cost_key: run for run in runs if run.snli_mode != "distilbert"}
    step_s = (_measure_in_child(list(shapes.values()), "cuda", keep_going) if device.type == "cuda"
              else _measure_here(list(shapes.values()), device, keep_going))
    return {run.name: step_s[run.cost_key] * (run.steps + run.epochs * run.val_batches / 3)
            if run.cost_key in step_s else None for run in runs}


def _measure_here(shapes: list[Run], device: Any, keep_going: Callable[[], bool]) -> dict[tuple, float]:
    """cost_key -> seconds of one step, in order, while `keep_going()`."""
    out = {}
    for run in shapes:
        if not keep_going():
            break
        out[run.cost_key] = measure_step(run, device)
    return out


def _measure_child(shapes: list[Run], device_type: str, conn: Any) -> None:
    import torch

    for run in shapes:
        conn.send((run.cost_key, measure_step(run, torch.device(device_type))))


def _measure_in_child(shapes: list[Run], device_type: str, keep_going: Callable[[], bool]) -> dict[tuple, float]:
    """`_measure_here` in a spawned process, stopped when `keep_going()` turns false."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_measure_child, args=(shapes, device_type, send), daemon=True)
    child.start()
    send.close()
    out: dict[tuple, float] = {}
    try:
        while len(out) < len(shapes) and keep_going():
            if receive.poll(0.5):
                key, seconds = receive.recv()
                out[key] = seconds
            elif not child.is_alive():
                break  # it failed: its traceback is on stderr; the rest stays unestimated
    except EOFError:
        pass
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
    return out
