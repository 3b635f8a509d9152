"""Benchmarks of manualgrad against torch.nn: ``python -m benchmarks.bench``."""
