"""IncrementalDetokenizer against the tokenizer's own decode (the oracle): multi-byte text, stop strings."""
import pytest

from qinfer.engine.detokenizer import IncrementalDetokenizer
from qinfer.testing.tiny_model import train_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    " Hello, world!  How are you today?",
    "héllo wörld — naïve café 世界 🙂🚀 done",
    "numbers 0 1 2 3 4 5 6 7 8 9 and emoji 👩‍👩‍👧",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(512)


def stream(tokenizer, prompt, output_ids, **kwargs):
    """Feed output ids one by one as the scheduler does; returns (detokenizer, deltas, stop string)."""
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer(prompt).input_ids, **kwargs)
    deltas, stop = [], None
    for i, token_id in enumerate(output_ids):
        stop = detokenizer.update([token_id])
        finished = stop is not None or i == len(output_ids) - 1
        deltas.append(detokenizer.take_new_text(finished))
        if stop is not None:
            break
    return detokenizer, deltas, stop


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_equals_decode_of_all_output_ids(tokenizer, text):
    output_ids = tokenizer(text, add_special_tokens=False).input_ids
    _, deltas, _ = stream(tokenizer, "Once upon a time", output_ids)
    assert "".join(deltas) == tokenizer.decode(output_ids, skip_special_tokens=True)


def test_incomplete_utf8_is_held_until_the_character_completes(tokenizer):
    output_ids = tokenizer("🙂", add_special_tokens=False).input_ids
    assert len(output_ids) > 1                      # the emoji spans several byte tokens
    _, deltas, _ = stream(tokenizer, "A", output_ids)
    assert deltas[:-1] == [""] * (len(output_ids) - 1) and deltas[-1] == "🙂"


def test_special_tokens_are_not_text(tokenizer):
    output_ids = tokenizer("Hello", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    _, deltas, _ = stream(tokenizer, "A", output_ids)
    assert "".join(deltas) == "Hello"


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_across_token_boundaries_is_cut(tokenizer, include):
    text = "The river remembers the quiet harbour. The night train"
    output_ids = tokenizer(text, add_special_tokens=False).input_ids
    _, deltas, stop = stream(tokenizer, "Start", output_ids, stop=["quiet har", "zzz"],
                             include_stop_str_in_output=include)
    assert stop == "quiet har"
    assert "".join(deltas) == "The river remembers the " + ("quiet har" if include else "")


def test_earliest_of_several_stop_strings_wins(tokenizer):
    output_ids = tokenizer("a warm cup of tea", add_special_tokens=False).input_ids
    _, deltas, stop = stream(tokenizer, "x", output_ids, stop=["of tea", "cup"])
    assert stop == "cup" and "".join(deltas) == "a warm "


def test_streamed_deltas_never_show_a_stop_string_prefix_that_is_later_cut(tokenizer):
    output_ids = tokenizer("jumps over the lazy dog.", add_special_tokens=False).input_ids
    _, deltas, stop = stream(tokenizer, "x", output_ids, stop=["lazy dog"])
    assert stop == "lazy dog" and "".join(deltas) == "jumps over the "


def test_byte_level_tokens_decode_as_the_tokenizers_decoder(tokenizer):
    """The byte-level table decodes as the Rust ByteLevel decoder does, bad UTF-8 and added tokens included."""
    import random

    from qinfer.engine.detokenizer import _byte_level_bytes, token_table

    table = token_table(tokenizer)
    assert table.is_byte_level
    decoder = tokenizer.backend_tokenizer.decoder
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    rng = random.Random(0)
    for _ in range(2000):   # random ids: byte pieces that do not form valid UTF-8 are common
        ids = [rng.randrange(3, len(tokenizer)) for _ in range(rng.randrange(1, 8))]
        assert table.decode([table.tokens[i] for i in ids]) == decoder.decode([tokens[i] for i in ids])
    for added in ["<|eot|>", "héllo", "世界", "a b"]:   # characters outside the byte alphabet
        assert table.decode([_byte_level_bytes(added)]) == decoder.decode([added])


def test_random_ids_stream_the_decoders_text(tokenizer):
    """Any id sequence, bad UTF-8 included: the deltas add up to the decoder's text of all ids, short
    of a character still incomplete at the end (held back, as while streaming)."""
    import random

    rng = random.Random(1)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    for _ in range(200):
        output_ids = [rng.randrange(3, len(tokenizer)) for _ in range(rng.randrange(1, 30))]
        _, deltas, _ = stream(tokenizer, "A", output_ids)
        expected = tokenizer.backend_tokenizer.decoder.decode([tokens[i] for i in output_ids])
        assert expected in ("".join(deltas), "".join(deltas) + "\ufffd")


@pytest.mark.parametrize("byte_level", [True, False])
def test_decode_streams_as_update_and_take(tokenizer, byte_level):
    """decode(), the engine's path without stop strings, gives the deltas of update() + take_new_text():
    random ids, so bad UTF-8, special ids and ids past the vocabulary included."""
    import random

    rng = random.Random(2)
    prompt_ids = tokenizer("A").input_ids
    for _ in range(100):
        output_ids = [rng.randrange(len(tokenizer) + 2) for _ in range(rng.randrange(1, 30))]
        by_decode, by_update = (IncrementalDetokenizer(tokenizer, prompt_ids) for _ in range(2))
        by_decode.byte_level = by_update.byte_level = byte_level
        deltas = []
        for token_id in output_ids:
            by_update.update([token_id])
            deltas.append(by_update.take_new_text(finished=False))
        assert [by_decode.decode([token_id]) for token_id in output_ids] == deltas


@pytest.mark.parametrize("stop", [[], ["zzz"]])
def test_long_stream_equals_decode(tokenizer, stop):
    """Hundreds of tokens: the streamed deltas add up to the decode of all of them."""
    output_ids = tokenizer(" ".join(TEXTS * 4), add_special_tokens=False).input_ids
    assert len(output_ids) > 200
    _, deltas, _ = stream(tokenizer, "Once upon a time", output_ids, stop=stop)
    assert "".join(deltas) == tokenizer.decode(output_ids, skip_special_tokens=True)


@pytest.mark.parametrize("text", TEXTS)
def test_window_decoding_for_other_tokenizers_streams_the_same_text(tokenizer, text):
    """The token-window path (tokenizers that are not byte-level) on the same texts."""
    output_ids = tokenizer(text, add_special_tokens=False).input_ids
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer("Once upon a time").input_ids)
    detokenizer.byte_level = False   # as for a tokenizer without a ByteLevel decoder
    deltas = []
    for i, token_id in enumerate(output_ids):
        detokenizer.update([token_id])
        deltas.append(detokenizer.take_new_text(i == len(output_ids) - 1))
    assert "".join(deltas) == tokenizer.decode(output_ids, skip_special_tokens=True)
