"""The reproduction study (issue 13): the Moonshine and BlockSwap claims on real Fashion-MNIST, resumably.

``python -m benchmarks.reproduce`` runs it (:mod:`.study`, whose docstring says what each row is; :mod:`.plan`
lists the runs); ``python -m benchmarks.reproduce.fisher`` is the separate Fisher-ranking check;
``python -m benchmarks.reproduce.report`` renders the page from the results (:mod:`.costs`, :mod:`.fidelity` and
:mod:`.row5` write its sections).
"""
