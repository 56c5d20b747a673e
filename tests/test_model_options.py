"""Model options in one home: each declared once on `GPTConfig` (seqwarm/model.py), read by the config's
`model:` section, its docs and checks, the presets as named options."""

import dataclasses

import pytest

from seqwarm.config import PACKAGED_CONFIGS, ModelConfig, field_docs, load_config
from seqwarm.errors import ConfigError
from seqwarm.model import PRESETS, GPTConfig, model_options


def test_every_model_option_is_a_config_key_with_the_docstring_of_its_declaration():
    keys = {f.name for f in dataclasses.fields(ModelConfig)}
    options = {f.name for f in model_options()}
    assert keys == options | {"preset"} and "pad_vocab_to" not in keys  # an internal field is no key
    docs = field_docs()
    assert docs["model.activation"].startswith("The MLP's GELU")  # read from seqwarm/model.py
    assert docs["model.vocab_size"].startswith("Token ids the model embeds and predicts. `auto`")  # the config's


def test_a_preset_is_named_options_and_the_keys_override_them():
    assert all(set(p) <= {f.name for f in model_options()} for p in PRESETS.values())
    cfg = load_config("tiny-slw", ["model.preset=cpu-small", "model.n_layer=3", "model.activation=gelu"])
    assert cfg.model.gpt() == GPTConfig(**(PRESETS["cpu-small"] | {"n_layer": 3}), activation="gelu")
    assert load_config("tiny-slw", ["model.preset=gpt2-117m"]).model.gpt().activation == "gelu_tanh"
    explicit = load_config(
        "tiny-slw",
        ["model.preset=null", "model.n_layer=2", "model.n_head=2", "model.d_model=64", "model.max_seqlen=128"],
    )
    assert explicit.model.gpt() == load_config("tiny-slw", ["model.preset=tiny"]).model.gpt()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.activation=relu"], "model.activation: 'relu' is not one of gelu_tanh, gelu"),
        (["model.n_head=3"], r"model.d_model \(64\) must be divisible by n_head \(3\)"),
        (["model.n_layer=0"], "model.n_layer: must be a positive integer"),
        (["model.preset=null", "model.n_layer=2"], "model.n_head: required when model.preset is null"),
        (["model.preset=huge"], "model.preset: unknown preset 'huge'"),
    ],
)
def test_bad_model_options_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PACKAGED_CONFIGS / "tiny-slw.yaml", overrides)


def test_a_config_saved_before_the_activation_option_reads_and_compares_equal():
    # 0.2 wrote `dropout: 0.0` and no `activation`; read now, its model section equals the same config's
    # (so --resume sees no change) and builds the model it trained.
    old = {
        "model": {"preset": "tiny", "n_layer": None, "dropout": 0.0, "vocab_size": "auto"},
        "train": {"max_tokens": 1000},
    }
    from seqwarm.config import config_from_dict

    cfg = config_from_dict(old)
    assert cfg.model == load_config("tiny-slw", ["model.preset=tiny"]).model
    assert cfg.model.gpt().activation == "gelu_tanh"
