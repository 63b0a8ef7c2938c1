import numpy as np
import pytest
import sentencepiece as spm
from corpus_fixtures import make_documents

from megasparse.data.tokenizer import EOD_PIECE, TokenizerError, load_tokenizer


def test_special_ids_of_our_models(spm_model):
    tok = load_tokenizer(spm_model)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.eod_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == 600
    assert tok.id_to_piece(tok.eod_id) == EOD_PIECE and tok.has_dedicated_eod
    # <eod> is a control symbol: the literal text never encodes to it.
    assert tok.eod_id not in tok.encode("before <eod> after")


def test_round_trip_is_lossless(spm_model):
    tok = load_tokenizer(spm_model)
    # Unseen characters (CJK, emoji), repeated spaces and newlines survive thanks to byte
    # fallback and identity normalisation.
    for text in make_documents(20, seed=5) + ["日本語 ✓ 🙂", "two  spaces\n\nand\ttab", "x"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
        assert tok.decode(np.asarray(ids, dtype=np.uint16)) == text


def test_encode_batch_and_buffer_agree_with_encode(spm_model):
    tok = load_tokenizer(spm_model)
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
    tok = load_tokenizer(tmp_path / "foreign.model")
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (2, 0, 1, -1)
    assert tok.eod_id == tok.eos_id == 1 and not tok.has_dedicated_eod
    assert tok.vocab_size == 300
    text = docs[0].replace("\n", " ")
    assert tok.decode(tok.encode(text)) == text


def test_missing_or_invalid_model_file(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "absent.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(TokenizerError, match="junk.model: not a SentencePiece model"):
        load_tokenizer(junk)


# ------------------------------------------------------------------------------ Hugging Face
def test_hf_tokenizer_encodes_like_tokenizers_without_bos(hf_tokenizer_dir):
    from tokenizers import Tokenizer as HFTokenizer

    reference = HFTokenizer.from_file(f"{hf_tokenizer_dir}/tokenizer.json")
    for path in (hf_tokenizer_dir, f"{hf_tokenizer_dir}/tokenizer.json"):
        tok = load_tokenizer(path)
        assert tok.tokenizer_type == "HuggingFaceTokenizer" and tok.backend == "huggingface"
        assert tok.vocab_size == reference.get_vocab_size() == 500
        # tokenizer_config.json names </s> as EOS; <s> is BOS but is never added.
        assert tok.eod_id == tok.eos_id == reference.token_to_id("</s>")
        assert tok.bos_id == reference.token_to_id("<s>") and tok.unk_id == reference.token_to_id("<unk>")
        texts = make_documents(30, seed=4) + ["日本語 ✓ 🙂", "two  spaces\n\nand\ttab"]
        expected = [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]
        assert reference.encode(texts[0]).ids[0] == tok.bos_id  # the template would add it
        assert [tok.encode(t) for t in texts] == expected == tok.encode_batch(texts)
        flat, lengths = tok.encode_batch_to_buffer(texts, append_id=tok.eod_id)
        assert flat.dtype == np.int32 and flat.tolist() == [i for ids in expected for i in ids + [tok.eod_id]]
        assert lengths.tolist() == [len(ids) + 1 for ids in expected]
        assert tok.decode(np.asarray(expected[-2], dtype=np.uint16)) == texts[-2]
        assert tok.identity()["type"] == "HuggingFaceTokenizer" and len(tok.identity()["sha256"]) == 64


def test_hf_eod_found_by_name_without_config(tmp_path):
    from corpus_fixtures import train_hf_tokenizer

    path = train_hf_tokenizer(tmp_path / "gpt2like", special_tokens=("<|endoftext|>",), bos_template=False)
    tok = load_tokenizer(path, "HuggingFaceTokenizer")
    assert tok.id_to_piece(tok.eod_id) == "<|endoftext|>" and tok.bos_id == -1 and tok.unk_id == -1


def test_hf_without_eos_is_refused_with_what_to_set(tmp_path):
    from corpus_fixtures import train_hf_tokenizer

    path = train_hf_tokenizer(tmp_path / "noeos", special_tokens=("<unk>", "<s>"))
    with pytest.raises(TokenizerError, match=r"no end-of-document token.*set \"eos_token\" in .*tokenizer_config.json"):
        load_tokenizer(path)
    (tmp_path / "noeos" / "tokenizer_config.json").write_text('{"eos_token": "</eos>"}')
    with pytest.raises(TokenizerError, match="eos_token '</eos>' of the tokenizer config is not a token"):
        load_tokenizer(tmp_path / "noeos")


def test_type_inference_and_mismatched_type(tmp_path, spm_model, hf_tokenizer_dir):
    assert load_tokenizer(spm_model).tokenizer_type == "SentencePieceTokenizer"
    assert load_tokenizer(spm_model, "Llama2Tokenizer").backend == "sentencepiece"
    with pytest.raises(TokenizerError, match="needs --tokenizer-type HuggingFaceTokenizer"):
        load_tokenizer(f"{hf_tokenizer_dir}/tokenizer.json", "SentencePieceTokenizer")
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(spm_model, "HuggingFaceTokenizer")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json in this directory"):
        load_tokenizer(tmp_path / "empty")
