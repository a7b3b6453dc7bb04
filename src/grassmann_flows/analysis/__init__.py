"""Analysis of finished runs: the tables, the blog's results section and the figures.

    load      runs' results.json / config.json / eval_test.json; one run per (configuration, seed)
    stats     over-seed statistics, Student-t quantile, Welch's interval
    summary   configurations, lr choice on validation, G-vs-T gaps, report sections
    tables    markdown tables, summary JSON, the blog section
    figures   the figures (matplotlib)
    bench     the GPU benchmark JSON of scripts/benchmark.py

The command-line entry points are scripts/analyze_best_results.py,
scripts/visualize_results.py and scripts/make_record.py.
"""
