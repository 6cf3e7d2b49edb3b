"""llama2.c tokenizer: round trip and the encoding rule of DATA.md."""

from __future__ import annotations

import pytest

from edgekit.models.tokenizer import Llama2cTokenizer

TEXTS = ["Once upon a time", "Lily saw a big, red ball!", "naïve café — 😀 ünïcödé", "a\nb  c",
         "The end.", "x"]


@pytest.fixture(scope="module")
def tok(stories_dir):
    return Llama2cTokenizer.from_file(stories_dir / "tok512.bin", 512)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id
    assert tok.decode(ids) == text


def test_encoding_rule(tok):
    ids = tok.encode("Once upon a time", bos=False)
    # Dummy prefix: the first piece starts with the space llama2.c prepends.
    assert tok.pieces[ids[0]].startswith(b" ")
    # Merging stops only when no adjacent pair concatenates to a vocabulary piece.
    for text in TEXTS:
        ids = tok.encode(text, bos=False)
        for a, b in zip(ids, ids[1:]):
            assert tok.pieces[a] + tok.pieces[b] not in tok.lookup
    # Characters missing from the vocabulary fall back to their UTF-8 bytes (<0xXX> tokens).
    smile = tok.encode("😀", bos=False)[1:]
    assert [tok.pieces[i] for i in smile] == [f"<0x{b:02X}>".encode() for b in "😀".encode()]
    assert smile == [b + 3 for b in "😀".encode()]


def test_highest_score_pair_merges_first(tok):
    """Hand-traced: ' a' must merge before 'a' joins anything else, by score order."""
    ids = tok.encode("a", bos=False)
    assert [tok.pieces[i] for i in ids] == [b" a"]


def test_truncated_tokenizer_is_a_user_error(tmp_path, stories_dir):
    from edgekit.errors import ModelLoadError

    bad = tmp_path / "tok.bin"
    bad.write_bytes((stories_dir / "tok512.bin").read_bytes()[:3000])
    with pytest.raises(ModelLoadError):
        Llama2cTokenizer.from_file(bad, 512)
