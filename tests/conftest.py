"""Shared set-up and fixtures of the tests.

Shared helper modules (import them by name: tests/ is on sys.path):

- `helpers`: tiny ViT/DeiT/BERT models, generated image and text data, collators, `logged`, and
  `training_args`, the one factory of training arguments (`TINY_RUN` + a module's presets + overrides);
- `lm_helpers`: a tiny GPT-2 and generated token data;
- `stats_helpers`: `make_stats`, hand-made statistics tables (numpy only);
- `launch`: `launch`, the one launcher of multi-process runs (`accelerate launch` on CPU, a free
  port per call), and `launch_mp_worker` for `tests/mp_worker.py`;
- `mp_records`: reading back what the multi-process workers wrote.

Fixtures (below): `clean_registry`, `examples_env`.
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")

# Tests import their helpers as a top-level module; keep them off the network.
sys.path.insert(0, HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def clean_registry():
    """Strategies registered in the test, and strategy modules it imported, are gone after it."""
    from kakurenbo_hf.strategies import base as strategies_base

    before = dict(strategies_base._REGISTRY)
    modules_before = set(sys.modules)
    yield
    strategies_base._REGISTRY.clear()
    strategies_base._REGISTRY.update(before)
    for name in set(sys.modules) - modules_before:
        if name.startswith("kakurenbo_hf.strategies."):
            del sys.modules[name]


@pytest.fixture
def examples_env(monkeypatch, tmp_path):
    """For the tests of examples/: offline (hub, datasets, tokenizers), with a datasets cache of the
    test's own under tmp_path, and the example scripts importable by name. Subprocesses inherit it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))
    monkeypatch.syspath_prepend(EXAMPLES)
