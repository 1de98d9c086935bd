"""Augmentation: basic set A (spatial.py) and distracting-video noise, BE first (be.py). No Ray here."""
