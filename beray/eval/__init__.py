"""Evaluation of pretrained checkpoints (issue 10, in progress): metrics first."""
