"""The classifier: printed structure, parameter count, masked pooling, padding invariance."""

from __future__ import annotations

import pytest
import torch

from rnnlab.models import RNNClassifier, bigram_ids, build_model, count_parameters, drop_words, masked_pool
from rnnlab.train import Config, ConfigError

ORIGINAL_LSTM = """ImdbNet(
  (embedding): Embedding(20001, 64)
  (lstm): LSTM(64, 64)
  (linear1): Linear(in_features=64, out_features=64, bias=True)
  (act1): ReLU()
  (linear2): Linear(in_features=64, out_features=2, bias=True)
)"""


@pytest.mark.parametrize("encoder", ["torch", "rnnlab"])
def test_default_model_prints_as_the_original(encoder):
    model = build_model(Config(encoder=encoder), 20001, 2)
    assert str(model) == ORIGINAL_LSTM
    # 20001*64 + 4*64*(64+64) + 8*64 + (64*64+64) + (64*2+2)
    assert count_parameters(model) == 1_317_634


def test_gru_and_rnn_use_their_cell_name():
    assert "(gru): GRU(64, 64)" in str(build_model(Config(cell="gru", encoder="torch"), 50, 2))
    for encoder in ("torch", "rnnlab"):
        model = build_model(Config(cell="rnn", encoder=encoder, nonlinearity="relu"), 50, 2)
        assert "(rnn): RNN(64, 64" in str(model) and model.rnn.nonlinearity == "relu"


def test_masked_pool_values():
    # out: L=3, N=2, H=1; sequence 0 has length 3, sequence 1 length 2 (step 2 is padding = 100).
    out = torch.tensor([[[1.0], [4.0]], [[3.0], [-2.0]], [[2.0], [100.0]]])
    lengths = torch.tensor([3, 2])
    assert masked_pool(out, lengths, "last").tolist() == [[2.0], [-2.0]]
    assert masked_pool(out, lengths, "mean").tolist() == [[2.0], [1.0]]
    assert masked_pool(out, lengths, "max").tolist() == [[3.0], [4.0]]
    assert masked_pool(out, lengths, "meanmax").tolist() == [[2.0, 3.0], [1.0, 4.0]]
    # bidirectional "last": forward half at the last real step, backward half at step 0.
    bi = torch.cat([out, 10 * out], dim=2)  # (3, 2, 2)
    assert masked_pool(bi, lengths, "last", num_directions=2).tolist() == [[2.0, 10.0], [-2.0, 40.0]]


CASES = [
    (cell, encoder, bi, pooling)
    for cell, encoder in [
        ("lstm", "torch"),
        ("lstm", "rnnlab"),
        ("gru", "rnnlab"),
        ("rnn", "torch"),
        ("gru", "reference"),
    ]
    for bi in (False, True)
    for pooling in ("last", "mean", "max", "meanmax")
]


@pytest.mark.parametrize("cell,encoder,bi,pooling", CASES)
def test_padding_never_changes_the_result(cell, encoder, bi, pooling):
    """Each sequence alone (no padding) == in a padded batch with garbage ids after its end."""
    torch.manual_seed(0)
    config = Config(
        cell=cell, encoder=encoder, bidirectional=bi, pooling=pooling, embedding_dim=8, hidden_size=6, num_layers=2
    )
    model = build_model(config, 30, 3).double().eval()
    lengths = torch.tensor([7, 2, 5, 1])
    ids = torch.randint(1, 30, (4, 11))  # padded region filled with real (non-zero) ids on purpose
    with torch.no_grad():
        batched = model(ids, lengths)
        alone = torch.cat([model(ids[i : i + 1, :n], lengths[i : i + 1]) for i, n in enumerate(lengths.tolist())])
        zero_pad = ids.clone()
        zero_pad[torch.arange(11)[None, :] >= lengths[:, None]] = 0
        batched_zero = model(zero_pad[:, :7], lengths)
    torch.testing.assert_close(batched, alone, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(batched_zero, alone, rtol=1e-12, atol=1e-12)


def test_impls_share_weights_and_outputs():
    torch.manual_seed(1)
    ids, lengths = torch.randint(1, 40, (5, 9)), torch.tensor([9, 4, 1, 6, 2])
    ref = build_model(
        Config(encoder="torch", bidirectional=True, pooling="meanmax", hidden_size=8, embedding_dim=8), 40, 2
    ).double()
    for impl in ("rnnlab", "reference"):
        other = build_model(
            Config(encoder=impl, bidirectional=True, pooling="meanmax", hidden_size=8, embedding_dim=8), 40, 2
        ).double()
        other.load_state_dict(ref.state_dict())
        torch.testing.assert_close(other(ids, lengths), ref(ids, lengths), rtol=1e-10, atol=1e-12)


def test_nll_model_outputs_log_probabilities():
    model = build_model(Config(loss="nll", encoder="torch", hidden_size=4, embedding_dim=4), 10, 3)
    out = model(torch.randint(1, 10, (2, 5)), torch.tensor([5, 3]))
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2))
    assert "log_softmax=True" in str(model)


def test_meanmax_widths_and_optional_dropouts():
    model = build_model(
        Config(
            encoder="torch",
            bidirectional=True,
            pooling="meanmax",
            hidden_size=5,
            embedding_dropout=0.1,
            head_dropout=0.2,
        ),
        10,
        2,
    )
    assert (model.linear1.in_features, model.linear1.out_features) == (20, 10)
    assert model.embedding_dropout.p == 0.1 and model.head_dropout.p == 0.2


def test_drop_words_replaces_real_tokens_by_unk_at_rate_p():
    torch.manual_seed(0)
    ids = torch.randint(2, 1000, (200, 300))
    ids[:, 250:] = 0  # padding
    out = drop_words(ids, 0.25)
    dropped = out != ids
    assert torch.all(out[dropped] == 1)  # dropped words become <unk>
    assert not dropped[:, 250:].any()  # the padding stays padding
    rate = dropped[:, :250].double().mean().item()
    assert abs(rate - 0.25) < 0.005, rate  # 50,000 draws: 5 sigma is 0.001
    assert torch.equal(drop_words(ids, 0.0), ids)


def test_word_dropout_acts_in_training_only_and_prints():
    model = build_model(Config(encoder="torch", word_dropout=0.5, hidden_size=4, embedding_dim=4), 50, 2)
    assert "word_dropout=0.5" in str(model)
    ids, lengths = torch.randint(2, 50, (3, 20)), torch.tensor([20, 11, 5])
    seen = []
    model.embedding.register_forward_hook(lambda m, args, out: seen.append(args[0].t().clone()))
    model.eval()
    model(ids, lengths)
    assert torch.equal(seen[-1], ids)  # evaluation sees every word
    model.train()
    torch.manual_seed(1)
    model(ids, lengths)
    fed = seen[-1]
    assert ((fed == ids) | (fed == 1)).all() and (fed == 1).any()
    torch.manual_seed(1)
    model(ids, lengths)
    assert torch.equal(seen[-1], fed)  # drawn from the seeded global generator
    assert "word_dropout" not in str(build_model(Config(encoder="torch"), 50, 2))


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_word_dropout_out_of_range_is_refused(p):
    with pytest.raises(ValueError, match=rf"word_dropout must be in \[0, 1\), got {p}"):
        RNNClassifier(10, 2, word_dropout=p)
    with pytest.raises(ConfigError, match=rf"'word_dropout' must be in \[0, 1\), got {p}"):
        Config(word_dropout=p)


def test_bad_inputs():
    with pytest.raises(ValueError, match="pooling must be one of last, mean, max, meanmax; got 'sum'"):
        RNNClassifier(10, 2, pooling="sum")
    with pytest.raises(ValueError, match="num_classes >= 2"):
        RNNClassifier(10, 1)
    model = RNNClassifier(10, 2, encoder="torch")
    with pytest.raises(ValueError, match=r"lengths must be \(N,\) = \(2,\), got \(3,\)"):
        model(torch.ones(2, 4, dtype=torch.long), torch.ones(3, dtype=torch.long))


def test_bigram_ids_pin_the_hash_and_padding():
    ids = torch.tensor([[5, 7, 2, 0, 0], [3, 0, 0, 0, 0]])
    got = bigram_ids(ids, 1000)
    want = [
        [(0 * 1000003 + 5) % 1000 + 1, (5 * 1000003 + 7) % 1000 + 1, (7 * 1000003 + 2) % 1000 + 1, 0, 0],
        [4, 0, 0, 0, 0],
    ]
    assert got.tolist() == want and want[0][:3] == [6, 23, 24]


def test_bigram_embedding_adds_word_pairs_and_keeps_padding_harmless():
    torch.manual_seed(0)
    config = Config(
        cell="gru", bidirectional=True, pooling="meanmax", embedding_dim=8, hidden_size=6, bigram_buckets=50
    )
    model = build_model(config, 30, 2).double().eval()
    assert (
        model.bigram_embedding.weight.shape == (51, 8)
        and count_parameters(model) == count_parameters(build_model(config.replace(bigram_buckets=0), 30, 2)) + 51 * 8
    )
    ids, lengths = torch.tensor([[4, 9, 3, 0], [9, 4, 3, 8]]), torch.tensor([3, 4])
    words_only = build_model(config.replace(bigram_buckets=0), 30, 2).double().eval()
    words_only.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("bigram")})
    with torch.no_grad():
        alone = model(ids[:1, :3], lengths[:1])
        both = model(ids, lengths)
        assert not torch.allclose(both, words_only(ids, lengths))  # the bigrams change the input
        model.bigram_embedding.weight.zero_()
        torch.testing.assert_close(model(ids, lengths), words_only(ids, lengths), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(both[:1], alone, rtol=1e-12, atol=1e-12)  # padding never matters
    with pytest.raises(ConfigError, match="'bigram_buckets' must be >= 0, got -1"):
        Config(bigram_buckets=-1)


@pytest.mark.filterwarnings("ignore::rnnlab.nn.options.OptionFallbackWarning")
def test_layer_options_reach_the_encoder():
    """Config keys layer_norm, weight_drop, ... build the rnnlab.nn encoder with those options;
    at their defaults the encoder is the plain one (same printout, same parameters)."""
    config = Config(cell="lstm", layer_norm=True, weight_drop=0.3, zoneout=0.1, peephole=True, bidirectional=True)
    model = build_model(config, 50, 2)
    assert (
        "(lstm): LSTM(64, 64, bidirectional=True, layer_norm=True, zoneout=0.1, weight_drop=0.3, peephole=True)"
        in str(model)
    )
    assert {"ln_weight_ih_l0", "ln_bias_c_l0_reverse", "weight_peephole_l0"} <= set(dict(model.lstm.named_parameters()))
    gru = build_model(Config(cell="gru", recurrent_dropout=0.2, gate_activation="hard_sigmoid"), 50, 2).gru
    assert (gru.recurrent_dropout, gru.gate_activation) == (0.2, "hard_sigmoid")
    rnn_model = build_model(Config(cell="rnn", layer_norm=True, encoder="reference"), 50, 2).rnn
    assert rnn_model.layer_norm and rnn_model.impl == "reference"
    ids, lengths = torch.randint(1, 50, (3, 7)), torch.tensor([7, 4, 2])
    model.eval()
    assert model(ids, lengths).shape == (3, 2)


def test_layer_options_and_torch_layers():
    from rnnlab.models.classifier import make_encoder

    with pytest.raises(ValueError, match=r"encoder='torch': torch.nn.GRU has no layer_norm; use encoder='rnnlab'"):
        make_encoder("gru", "torch", 4, 4, options={"layer_norm": True})
    with pytest.raises(ValueError, match=r"unknown layer option\(s\) layernorm; valid: layer_norm, recurrent_dropout"):
        make_encoder("gru", "rnnlab", 4, 4, options={"layernorm": True})
    assert str(make_encoder("gru", "torch", 4, 4, options={"layer_norm": False})) == "GRU(4, 4)"
