"""What `seqwarm export-schedule` produces: `Export` (a framework's settings, notes and length-rule variants), and
the settings written as the document their framework reads (JSON, YAML, a bash fragment, Python)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Variant:
    """One way a framework can be set up, and the lengths it then trains at seqwarm's steps 0, 1, ..."""

    label: str
    lengths: Callable[[int], list[int]]  # steps -> lengths


@dataclass(frozen=True)
class Export:
    framework: str
    settings: dict
    """What to put in that framework's config or command line (JSON-able)."""
    notes: list[str] = field(default_factory=list)
    """What the settings cannot reproduce."""
    variants: list[Variant] = field(default_factory=list)
    """The exported setup first; then other setups of the framework worth comparing."""


# --- the settings as files their framework reads -------------------------------------------------------
# stdout (or --out) carries only the document, so `export-schedule ... > file` is a valid file for the framework;
# the notes go to stderr (issue 27: a JSON followed by "# note:" lines is not JSON).

DOCUMENT_KIND = {"deepspeed": "json", "composer": "json", "megatron-deepspeed": "bash", "olmo-core": "python"}


def settings_text(exp: Export, *, yaml_out: bool = False) -> str:
    """The settings as one document: JSON for DeepSpeed and Composer (YAML with `yaml_out`), a bash fragment for
    Megatron-DeepSpeed (it writes ds_config.json and sets an argument array), Python for OLMo-core (whose settings are
    Python objects). The notes are not in it: `notes_text`."""
    kind = DOCUMENT_KIND[exp.framework]
    if kind == "bash":
        return _megatron_bash(exp.settings)
    if kind == "python":
        return _olmo_python(exp.settings)
    if yaml_out:
        import yaml

        return yaml.safe_dump(exp.settings, sort_keys=False)
    return json.dumps(exp.settings, indent=2) + "\n"


def notes_text(exp: Export) -> str:
    """What the settings cannot reproduce, one `note:` line each (for stderr)."""
    return "".join(f"note: {n}\n" for n in exp.notes)


def _megatron_bash(s: dict) -> str:
    import shlex

    lines = ["# Megatron-DeepSpeed settings from seqwarm export-schedule (docs/EXPORT.md). Source it, then run"]
    lines.append('#   python pretrain_gpt.py "${SEQWARM_ARGS[@]}" ...your model and data flags...')
    if "ds_config.json" in s:
        # A quoted heredoc: the JSON is written as is, no shell expansion inside it.
        lines.append("# It writes ds_config.json: merge its data_efficiency block into your DeepSpeed config.")
        lines.append("cat > ds_config.json <<'SEQWARM_JSON'")
        lines.append(json.dumps(s["ds_config.json"], indent=2))
        lines.append("SEQWARM_JSON")
    lines.append("SEQWARM_ARGS=(")
    lines += ["  " + " ".join(shlex.quote(w) for w in flag.split()) for flag in s["flags"]]
    lines.append(")")
    return "\n".join(lines) + "\n"


def _olmo_python(s: dict) -> str:
    cb = s["SequenceLengthSchedulerCallback"]
    d = s["Trainer"]["max_duration"]
    args = "".join(f"    {k}={v!r},\n" for k, v in cb.items())
    return (
        "# OLMo-core settings from seqwarm export-schedule (docs/EXPORT.md): import these names into your training\n"
        "# script. Notes on what OLMo-core cannot reproduce went to stderr.\n"
        "from olmo_core.train import Duration\n"
        "from olmo_core.train.callbacks import SequenceLengthSchedulerCallback\n"
        "\n"
        "# NumpyFSLDatasetConfig(sequence_length=SEQUENCE_LENGTH, ...)\n"
        f"SEQUENCE_LENGTH = {s['NumpyFSLDataset']['sequence_length']!r}\n"
        "# TrainerConfig(max_duration=MAX_DURATION, ...)\n"
        f"MAX_DURATION = Duration.{d['unit']}({d['value']!r})\n"
        "# one of the trainer's callbacks\n"
        f"SEQUENCE_LENGTH_SCHEDULER = SequenceLengthSchedulerCallback(\n{args})\n"
    )
