"""Public path of the integrations with other Trainer classes (see `hf/integrations.py`).

    from kakurenbo_hf.integrations import KakurenboSeq2SeqTrainer, with_hiding
"""

from .hf.integrations import *  # noqa: F401,F403
from .hf.integrations import __all__  # noqa: F401
