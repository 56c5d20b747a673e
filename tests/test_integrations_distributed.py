"""The integrations' token all-reduce under torchrun (gloo, 2 processes on CPU): each rank trains another number of
unpadded targets, and every rank's clock holds their global sum, with the same lengths and LRs on both ranks."""

import json
import os
import subprocess
import sys

import pytest

from seqwarm.curriculum import SeqlenSchedule
from seqwarm.integrations import SequenceLengthWarmup
from seqwarm.schedule import Clock, learning_rate

pytestmark = pytest.mark.distributed  # every test here starts processes with torchrun

SETTINGS = dict(seqlen_start=8, seqlen_end=32, duration=4, lr=1e-3, min_lr=1e-4, warmup_steps=2, max_tokens=900)

# Rank 0 trains tensor rows (3 rows, one of them padded after 5 targets); rank 1 trains Hugging Face dicts (2 rows,
# labels padded after 12 positions in one). Two micro-batches per step on each rank, until SLW says finished.
LOOP_RANK = """
import json, sys
import torch
import torch.distributed as dist
from seqwarm.integrations import SequenceLengthWarmup

dist.init_process_group("gloo")
rank = dist.get_rank()
slw = SequenceLengthWarmup(**json.loads(sys.argv[2]))
param = torch.nn.Parameter(torch.ones(3))
optimizer = torch.optim.AdamW([param])
scheduler = slw.scheduler(optimizer)
ids = torch.arange(3 * 33).reshape(3, 33) % 50
if rank == 0:
    rows = ids.clone()
    rows[1, 6:] = -100
else:
    labels = ids[:2].clone()
    labels[0, 12:] = -100
    rows = {"input_ids": ids[:2], "labels": labels, "attention_mask": (labels != -100).long()}
out = []
while not slw.finished:
    local = 0
    for _ in range(2):
        batch = slw.truncate(rows)
        if rank == 0:
            local += int((batch[1] != -100).sum())
            width = batch[0].shape[1]
        else:
            local += int((batch["labels"][:, 1:] != -100).sum())
            width = batch["input_ids"].shape[1]
    param.sum().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    out.append({"width": width, "local": local, "tokens": slw.clock.tokens, "lr": scheduler.get_last_lr()[0]})
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump({"steps": out, "clock": slw.clock.state_dict()}, f)
dist.barrier()  # leave together: a rank destroying the gloo group while its peer is still in it can abort (-6)
dist.destroy_process_group()
"""


def torchrun(script, *args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def test_every_rank_counts_the_global_tokens_and_agrees_on_lengths_and_lrs(tmp_path):
    script = tmp_path / "loop_rank.py"
    script.write_text(LOOP_RANK)
    torchrun(script, str(tmp_path), json.dumps(SETTINGS))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    a, b = (r["steps"] for r in ranks)
    assert len(a) == len(b) > 5 and ranks[0]["clock"] == ranks[1]["clock"]

    train = SequenceLengthWarmup(**SETTINGS).config.train
    schedule = SeqlenSchedule.linear(seqlen_start=8, seqlen_end=32, duration=4)
    clock = Clock()
    for step, (x, y) in enumerate(zip(a, b)):
        seqlen = schedule(step)
        assert x["width"] == y["width"] == seqlen
        # Rank 0: 3 rows of seqlen targets, one padded after 5; rank 1: 2 rows of seqlen - 1 (shifted labels), one
        # padded after 12 positions (11 targets). Two micro-batches each.
        assert x["local"] == 2 * (2 * seqlen + min(seqlen, 5))
        assert y["local"] == 2 * ((seqlen - 1) + min(seqlen, 12) - 1)
        assert x["local"] != y["local"]
        tokens = x["local"] + y["local"]
        assert x["lr"] == y["lr"] == learning_rate(clock.after(tokens, train), train)
        clock.tick(tokens, train)
        assert x["tokens"] == y["tokens"] == clock.tokens  # each rank's clock: the global sum
    assert clock.tokens >= SETTINGS["max_tokens"] and ranks[0]["clock"] == clock.state_dict()


# The same through Hugging Face's Trainer (DDP over gloo, set up by accelerate): one dataset of rows whose label
# padding differs row by row, split between the ranks by the Trainer's sampler; each rank records the unpadded
# targets of the micro-batches it trained (a forward pre-hook), 2 micro-batches of 2 rows per step.
HF_RANK = """
import json, sys
import torch
import torch.distributed
import transformers
from seqwarm.integrations import SequenceLengthWarmup
from seqwarm.integrations.hf import SLWTrainer

out_dir, settings = sys.argv[1], json.loads(sys.argv[2])
torch.manual_seed(0)
config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32, bos_token_id=0,
                                 eos_token_id=0)
model = transformers.GPT2LMHeadModel(config)
local = []
model.register_forward_pre_hook(
    lambda m, args, kwargs: local.append(int((kwargs["labels"][:, 1:] != -100).sum())) if m.training else None,
    with_kwargs=True,
)
ids = torch.randint(0, 50, (64, 32), generator=torch.Generator().manual_seed(1))
rows = []
for i, r in enumerate(ids):
    labels = r.clone()
    labels[3 + (7 * i) % 29 :] = -100
    rows.append({"input_ids": r, "labels": labels})
args = transformers.TrainingArguments(output_dir=out_dir, report_to=[], use_cpu=True, max_steps=100,
    per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=settings["lr"], logging_steps=1,
    save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0, ddp_backend="gloo")
trainer = SLWTrainer(slw=SequenceLengthWarmup(**settings), model=model, args=args, train_dataset=rows)
trainer.train()
rank = trainer.args.process_index
steps = [{k: r[k] for k in ("step", "seqlen", "tokens", "learning_rate")} for r in trainer.state.log_history
         if "loss" in r]
with open(f"{out_dir}/hf{rank}.json", "w") as f:
    json.dump({"steps": steps, "local": local, "clock": trainer.slw.clock.state_dict()}, f)
# Leave together and tear the group down before exit: a rank exiting with the gloo group alive was
# seen to abort in its destructor ("terminate called without an active exception", exit -6).
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow  # two processes import transformers
def test_the_hf_trainer_counts_the_global_tokens_on_every_rank(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    script = tmp_path / "hf_rank.py"
    script.write_text(HF_RANK)
    settings = {**SETTINGS, "max_tokens": 600}
    torchrun(script, str(tmp_path), json.dumps(settings))
    ranks = [json.loads((tmp_path / f"hf{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] and ranks[0]["clock"] == ranks[1]["clock"]
    steps = ranks[0]["steps"]
    # Each step's tokens: the unpadded targets of both ranks' two micro-batches, which differ between the ranks.
    per_rank = [[sum(r["local"][2 * s : 2 * s + 2]) for s in range(len(steps))] for r in ranks]
    assert all(len(r["local"]) == 2 * len(steps) for r in ranks) and per_rank[0] != per_rank[1]
    train = SequenceLengthWarmup(**settings).config.train
    clock = Clock()
    for step, row in enumerate(steps):
        tokens = per_rank[0][step] + per_rank[1][step]
        assert row["learning_rate"] == learning_rate(clock.after(tokens, train), train)
        clock.tick(tokens, train)
        assert row["tokens"] == clock.tokens and row["seqlen"] == SeqlenSchedule.linear(
            seqlen_start=8, seqlen_end=32, duration=4
        )(step)
    assert len(steps) > 5 and clock.tokens >= 600 and ranks[0]["clock"] == clock.state_dict()
