"""beray: Background Erasing (BE) for self-supervised video learning, on Ray."""

__version__ = "0.1.0"
