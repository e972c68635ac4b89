"""The run directory's contract: what train.py writes into --logdir and every later tool reads.

This package imports no training code, so evaluation, translation and export depend on it
without pulling in the trainer.
"""
