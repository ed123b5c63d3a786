"""Model coverage of ``cheapen`` across zoos, against one contract each: the classifiers of torchvision and timm
(:mod:`.zoo`, ``python -m benchmarks.coverage``; the contract is :func:`.zoo.contract_failures`) and torchvision's
segmentation and detection families (:mod:`.dense`, ``python -m benchmarks.coverage.dense``; its contract is
:func:`.dense.dense_failures`). ``tests/test_zoo.py`` asserts both; the rendered tables are ``docs/coverage.md``.
"""
