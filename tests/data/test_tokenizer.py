import numpy as np
import pytest
import sentencepiece as spm
from corpus_fixtures import make_documents

from megasparse.data.tokenizer import EOD_PIECE, Tokenizer, TokenizerError


def test_special_ids_of_our_models(spm_model):
    tok = Tokenizer(spm_model)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.eod_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == 600
    assert tok.id_to_piece(tok.eod_id) == EOD_PIECE and tok.has_dedicated_eod
    # <eod> is a control symbol: the literal text never encodes to it.
    assert tok.eod_id not in tok.encode("before <eod> after")


def test_round_trip_is_lossless(spm_model):
    tok = Tokenizer(spm_model)
    # Unseen characters (CJK, emoji), repeated spaces and newlines survive thanks to byte
    # fallback and identity normalisation.
    for text in make_documents(20, seed=5) + ["日本語 ✓ 🙂", "two  spaces\n\nand\ttab", "x"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
        assert tok.decode(np.asarray(ids, dtype=np.uint16)) == text


def test_encode_batch_and_buffer_agree_with_encode(spm_model):
    tok = Tokenizer(spm_model)
    texts = make_documents(30, seed=9)
    single = [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts) == single
    assert tok.encode_batch(texts, num_threads=2) == single
    flat, lengths = tok.encode_batch_to_buffer(texts, append_id=tok.eod_id)
    expected = [i for ids in single for i in ids + [tok.eod_id]]
    assert flat.dtype == np.int32 and flat.tolist() == expected
    assert lengths.tolist() == [len(s) + 1 for s in single]
    flat, lengths = tok.encode_batch_to_buffer(texts)
    assert flat.tolist() == [i for ids in single for i in ids]
    empty_flat, empty_lengths = tok.encode_batch_to_buffer([])
    assert empty_flat.size == 0 and empty_lengths.size == 0


def test_loads_foreign_model_with_other_special_ids(tmp_path):
    # Like Llama/Mistral models: no <eod>, no pad, and here unusual positions for unk/bos/eos.
    docs = make_documents(200, seed=1)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs),
        model_prefix=str(tmp_path / "foreign"),
        vocab_size=300,
        model_type="unigram",
        unk_id=2,
        bos_id=0,
        eos_id=1,
        pad_id=-1,
        minloglevel=2,
    )
    tok = Tokenizer(tmp_path / "foreign.model")
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (2, 0, 1, -1)
    assert tok.eod_id == tok.eos_id == 1 and not tok.has_dedicated_eod
    assert tok.vocab_size == 300
    text = docs[0].replace("\n", " ")
    assert tok.decode(tok.encode(text)) == text


def test_missing_or_invalid_model_file(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer(tmp_path / "absent.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(TokenizerError, match="junk.model: not a SentencePiece model"):
        Tokenizer(junk)
