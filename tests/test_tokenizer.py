import hashlib
from pathlib import Path

from seqwarm.tokenizer import ENCODER_JSON_SHA256, EOT_ID, VOCAB_BPE_SHA256, gpt2_encoding, gpt2_files


def test_files_are_the_ones_tiktoken_pins_for_gpt2():
    vocab_bpe, encoder_json = gpt2_files()
    assert hashlib.sha256(Path(vocab_bpe).read_bytes()).hexdigest() == VOCAB_BPE_SHA256
    assert hashlib.sha256(Path(encoder_json).read_bytes()).hexdigest() == ENCODER_JSON_SHA256


def test_ids_equal_gpt2s():
    enc = gpt2_encoding()
    assert enc.n_vocab == 50257
    # ids published with GPT-2 (and reproduced by every GPT-2 tokenizer)
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("The quick brown fox") == [464, 2068, 7586, 21831]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_ID]
    assert enc.encode_ordinary("<|endoftext|>") != [EOT_ID]  # plain text never forges the separator
    text = "Sequence Length Warmup: 8 -> 1024 tokens, isn't it?\n\n"
    assert enc.decode(enc.encode(text)) == text
