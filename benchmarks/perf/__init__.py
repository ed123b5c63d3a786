"""Performance studies: latency, params and MACs of cheap students side by side (:mod:`.latency_table`), how long
cheapening takes (:mod:`.cheapen_speed`), distillation throughput against a plain loop
(:mod:`.distill_throughput`), and where a BlockSwap search spends its time (:mod:`.search_bench`).

Each runs as ``python -m benchmarks.perf.<name>``; ``python -m benchmarks.perf`` lists them. The figures are on
``benchmarks/perf/README.md``.
"""
