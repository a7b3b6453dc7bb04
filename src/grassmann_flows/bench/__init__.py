"""Benchmarks (`python scripts/benchmark.py`), one module per thing measured.

    timing.py   what every part shares: `measure` (median of timed steps), error guards, table cells
    mixer.py    (a) one mixing layer, forward + backward, naive / fast / fused against SDPA attention
    model.py    (b) whole training steps of the models `train` builds, and the grid's projected hours
    decode.py   (c) generation, one token per step: a list of timed decoders (`DECODERS`)
    cli.py      the command line, the --window plan of scripts/gpu_window.sh, the JSON and tables
    results.py  reading the JSON back for the analysis scripts (ratios, GPU files, markdown)

Importing this package imports nothing heavy: `results` needs no torch.
"""
