"""Students that start from their teacher (issue 11): random-initialised against teacher-initialised and
reconstructed students, along the distillation run.

``python -m benchmarks.teacher_init`` runs the study (:mod:`.study`); ``python -m benchmarks.teacher_init.data_free``
measures how close the data-free starts are before any data is seen (:mod:`.data_free`);
``python -m benchmarks.teacher_init.reconstruct_sweep`` sweeps the reconstruction's settings
(:mod:`.reconstruct_sweep`). The figures are on ``benchmarks/teacher_init/README.md``.
"""
