"""`seqwarm sweep`: a grid of runs, trained one after another, and the grid's report.

The paper's stability claim rests on grids: 5 seeds x 4 learning rates, baseline vs SLW, counting
the steps whose loss ratio exceeds 1.5 (Appendix A.3.1, Table 5), and on comparisons with
Shortformer and batch-size warmup (Section 5.1). A sweep is the Cartesian product of axes:

- a config field with a list of values: `--grid 'train.lr=[1e-3,2e-3]'`;
- `method`, a named list of override bundles (a sweep file's `methods:`), so that "SLW" and "the
  baseline with a long LR warmup", which differ in more than one field, are values of one axis.

Runs are named by their coordinates (`method=slw__lr=0.002__seed=1`) inside the output directory
and trained in product order (the first axis outermost). Every config is built and checked before
the first run starts. A rerun of the same command skips finished runs, resumes an interrupted one
from its last checkpoint (or restarts it, when it had none), and refuses a run directory whose
saved config differs from the one the grid now asks for. A run stopped by a non-finite loss
(`monitor.on_nonfinite`) is an outcome, not an error: it is recorded as diverged and the sweep
goes on.

The package, from the pure core out:

- `grid`: axes, the sweep file and the command line -> a `Sweep`; `build_cells` -> the runs and their configs.
- `state`: what a run directory already holds (finished, diverged, resumable, foreign).
- `summary`: the grid report (Table 5 layout, LR sensitivity, tokens to reach the baseline, the
  figure), computed from the runs' own metrics.jsonl, so it can be written mid-sweep.
- `runner`: trains the missing runs with the train function it is given (`seqwarm.cli` passes
  `seqwarm.lifecycle.train`; this package never imports the trainer) and writes the report.
"""
