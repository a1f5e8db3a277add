"""perfcallbacks.padding: length-grouped batches, the batch sampler, predict in original order."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perfcallbacks.padding import LengthGroupedBatchSampler, length_grouped_batches, predict_length_grouped


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=300), st.integers(1, 40), st.booleans())
def test_batches_cover_every_index_once(lengths, batch_size, shuffle):
    batches = length_grouped_batches(lengths, batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(0))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(0 < len(b) <= batch_size for b in batches)
    if lengths and shuffle:
        assert max(lengths[i] for i in batches[0]) == max(lengths)  # longest batch first


def test_sorted_batches_minimise_padding():
    lengths = [5, 50, 6, 49, 7, 48]
    batches = length_grouped_batches(lengths, 2)
    assert batches == [[1, 3], [5, 4], [2, 0]]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="batch_size"):
        length_grouped_batches([1, 2], 0)
    with pytest.raises(TypeError, match="lengths"):
        length_grouped_batches(["a", None], 2)
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedBatchSampler([1, 2], batch_size=True)


def test_sampler_reshuffles_per_epoch_and_groups_lengths():
    lengths = [(i * 37) % 100 + 1 for i in range(400)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=1)
    first, second = list(sampler), list(sampler)
    assert first != second and len(first) == len(sampler) == 25
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(first)
    assert spread < 30  # random batches would spread ~90
    loader = torch.utils.data.DataLoader(list(range(400)), batch_sampler=sampler)
    assert sum(len(b) for b in loader) == 400
    dropped = LengthGroupedBatchSampler(lengths, batch_size=16, drop_last=True, mega_batch_mult=3)
    assert all(len(b) == 16 for b in dropped) and len(dropped) == len(list(dropped))


def _tiny_bert(vocab: int = 100):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=vocab, num_labels=3)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval()


def test_predict_length_grouped_matches_padded_forward_in_input_order():
    model = _tiny_bert()
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, 100, (int(n),), generator=gen).tolist() for n in torch.randint(2, 40, (23,), generator=gen)]
    ids = torch.zeros(len(rows), 40, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask).logits
    got = predict_length_grouped(model, rows, batch_size=4)
    assert got.shape == (23, 3)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not model.training


def test_predict_length_grouped_per_token_outputs_are_cut_to_length():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100)
    model = transformers.BertModel(config)
    out = predict_length_grouped(model, [[5, 6, 7], [8], [9, 10]], batch_size=2)
    assert [tuple(t.shape) for t in out] == [(3, 32), (1, 32), (2, 32)]
    assert model.training  # restored


def test_predict_length_grouped_with_real_tokenizer(minilm_dir):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    model = _tiny_bert(tokenizer.vocab_size)
    texts = ["short one", "a much longer sentence with many more words in it than the first", "mid length text"]
    got = predict_length_grouped(model, texts, tokenizer, batch_size=2,
                                 output_fn=lambda out, batch: out.logits.argmax(-1))
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = model(**enc).logits.argmax(-1)
    assert got.tolist() == expected.tolist()
    with pytest.raises(ValueError, match="tokenizer"):
        predict_length_grouped(model, texts)


def test_length_grouped_sampler_survives_lightning_predict_reinstantiation(tmp_path):
    """Lightning re-creates custom batch samplers for predict (injecting sampler/drop_last):
    the batches it runs must still be length-grouped, not arrival order."""
    pl = pytest.importorskip("lightning.pytorch")
    from torch.utils.data import DataLoader

    from perfcallbacks.padding import LengthGroupedBatchSampler

    lengths = [3, 60, 4, 58, 5, 61, 2, 59]
    rows = [torch.full((n,), 1.0) for n in lengths]

    class Echo(pl.LightningModule):
        def forward(self, x):
            return x

        def predict_step(self, batch, batch_idx):
            return batch.shape[1]

    def collate(items):
        return torch.nn.utils.rnn.pad_sequence(items, batch_first=True)

    loader = DataLoader(rows, batch_sampler=LengthGroupedBatchSampler(lengths, 2, shuffle=False), collate_fn=collate)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path))
    padded = trainer.predict(Echo(), loader)
    assert sorted(padded) == [3, 5, 59, 61]  # grouped (61,60) (59,58) (5,4) (3,2); arrival order: 60, 58, 61, 59


def test_length_grouped_sampler_groups_only_the_sampler_indices():
    from perfcallbacks.padding import LengthGroupedBatchSampler

    sampler = LengthGroupedBatchSampler([9, 1, 8, 2, 7, 3], 2, shuffle=False, sampler=[0, 2, 4])
    assert sorted(i for batch in sampler for i in batch) == [0, 2, 4]
    assert len(sampler) == 2
