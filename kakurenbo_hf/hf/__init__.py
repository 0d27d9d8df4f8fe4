"""The Hugging Face layer: the Trainer hooks (`trainer.py`), the `HidingController` they delegate
to, the arguments, integrations with other Trainer classes, the index-carrying dataset, the refresh
pass and the checks of the installed transformers (`compat.py`)."""
