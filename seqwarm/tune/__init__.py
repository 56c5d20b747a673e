"""`seqwarm tune`: the paper's low-cost tuning strategy for SLW's seqlen_s and T, automated.

Section 4 of the paper chooses the two hyperparameters of the linear pacing function from short
runs, using only the validation set:

1. start with seqlen_s = 8 and T = a few multiples of the LR warmup steps;
2. increase seqlen_s until the validation perplexity no longer fluctuates at the very beginning;
3. binary-search the largest T whose run has no significant fluctuation during the first few
   multiples of the LR warmup steps, a fluctuation being a validation perplexity above 1.3x the
   best one before it.

The package is a pure core and a thin runner:

- `settings`: the tuner's knobs (`tune.field=value`);
- `search`: the fluctuation rule, the search as a pure function of a probe,
  `probe(seqlen_s, T, steps)` (testable on a fake probe with a known answer), and the settings
  resolved against a config into a plan in steps;
- `probes`: real probes: prefixes of the full run (the same config, LR schedule and data order,
  only stopped after `steps` steps) with frequent validation on a fixed subset of the val split,
  each cached in its own run directory, and what a finished one left there;
- `outputs`: tune.md, tune.json, recommendation.yaml, deepspeed.json, and the progress lines;
- `runner`: `run_tune` / `main_tune`, which train the probes with the train function they are
  given (`seqwarm.cli` passes `seqwarm.lifecycle.train`), so that no tune module imports the trainer.

The decisions and assumptions behind the defaults are in docs/TUNING.md.
"""
