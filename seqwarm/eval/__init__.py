"""`seqwarm eval`: zero-shot evaluation (the paper's Tables 2 and 6), in a pure core and a runner.

- `results`: TaskResult, the eval.json document (merging, reading, writing) and the result table;
- `texts`: the tasks' texts: WikiText detokenizer, word counts, LAMBADA(-style) items, their loading;
- `scoring`: the model scorers on token tensors (split, sliding-window and LAMBADA NLL);
- `harness`: the lm-evaluation-harness bridge (`--lm-eval`), on a Hugging Face export;
- `runner`: plan_eval / run_eval / main_eval, the command wired to files.
"""
