"""Speed and memory measurements against PyTorch references, run from a checkout (`python -m benchmarks.speed`, …).

Each script prints ratios against a reference measured in the same run; BENCHMARKS.md holds the latest results.
"""
