"""The packing axis: how a step shorter than seqlen_end is made of full-length rows.

`truncate` (the paper's, Section 4): each row of seqlen_e + 1 tokens is cut to the step's length; a short
step trains `batch x seqlen_t` tokens, so SLW's early steps are also smaller batches *in tokens*, and the
effect of a short context is mixed with that of a small early batch (issue 26).

`melt` (OLMo-core's `SequenceLengthSchedulerCallback(truncate=False)`, Composer's `SeqLengthWarmup(truncate=
False)`): each full-length row is split into k = seqlen_e / L rows of length L, so every step trains the same
seqlen_e x batch tokens. In seqwarm's rows (seqlen_e + 1 tokens: inputs plus the shifted targets), melted row i
has inputs tokens[i*L : (i+1)*L] and targets tokens[i*L + 1 : (i+1)*L + 1]: exactly the row's seqlen_e targets,
none lost at a cut and none repeated (OLMo-core and Composer reshape rows of inputs and let the model shift
inside each short row, which drops the k - 1 targets across the cuts).

Which lengths: L must divide seqlen_e. seqwarm takes the largest divisor of seqlen_e that is a multiple of
`multiple_of` and not above the paced (truncation) length; OLMo-core floors to seqlen_s x a power of two, which
is the same set whenever seqlen_e / seqlen_s is a power of two and no other divisor lies between (8 -> 1024 or
2048 with multiple_of 8: 8, 16, ..., 1024), and refuses other lengths; the divisor rule also serves lengths such
as 1536 (..., 384, 512, 768, 1536). No torch here: `melt` reshapes any 2-D array with `reshape`.
"""

from __future__ import annotations


def melt_seqlen(seqlen: int, seqlen_end: int, multiple_of: int) -> int:
    """The melt length for a paced length: the largest divisor of seqlen_end that is a multiple of
    `multiple_of` and <= seqlen (seqlen_end itself from seqlen_end on). The config makes sure one exists
    (seqlen_start divides seqlen_end and is a multiple of multiple_of)."""
    if seqlen >= seqlen_end:
        return seqlen_end
    for length in range(seqlen - seqlen % multiple_of, 0, -multiple_of):
        if seqlen_end % length == 0:
            return length
    raise ValueError(f"no multiple of {multiple_of} <= {seqlen} divides {seqlen_end}")


def melt(batch, seqlen: int):
    """Full-length rows (B, seqlen_e + 1) -> inputs and targets (B * seqlen_e / seqlen, seqlen), shifted by one.

    Row b's piece i is inputs batch[b, i*L : (i+1)*L], targets batch[b, i*L + 1 : (i+1)*L + 1] (the module
    docstring): the same seqlen_e targets per row as at full length. Any 2-D sliceable with `reshape` works.
    """
    rows, width = batch.shape
    end = width - 1
    if end % seqlen:
        raise ValueError(f"melt: length {seqlen} does not divide the rows' {end} targets")
    return batch[:, :end].reshape(rows * (end // seqlen), seqlen), batch[:, 1:].reshape(rows * (end // seqlen), seqlen)
