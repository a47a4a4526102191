"""spanproof's performance harness (``python -m benchmarks.run``)."""
