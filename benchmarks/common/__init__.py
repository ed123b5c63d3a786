"""What the studies share, one module per job (import from the module itself; nothing is re-exported here):

- :mod:`.records`: the committed JSON-lines result files: read, append safely, the latest record per key.
- :mod:`.stats`: ranks, Spearman's ρ with bootstrap intervals, mean ± sd, Pareto fronts.
- :mod:`.report`: progress lines on stderr and number formatting for Markdown tables.
- :mod:`.runs`: torch-side helpers: dataset subsets, quiet ``cheapen``, a step timer, eval mode, one thread.
"""
