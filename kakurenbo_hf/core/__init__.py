"""The algorithm's core: statistics table, engine (epoch plans), sampler, schedules, bit sets.

Imports no transformers (enforced by tests/test_layers.py): usable and testable without a Trainer.
"""
