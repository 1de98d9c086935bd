"""Ray Train: the worker loop (loop.py), checkpoints, monitoring, and ``python -m beray.train``."""
