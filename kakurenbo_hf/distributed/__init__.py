"""State shared across processes: the communication topology, the statistics recorder (records to
the table's ranks), checkpoint files, and the RNG snapshots of exact resume.

Imports no transformers (enforced by tests/test_layers.py).
"""
