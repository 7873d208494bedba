"""Errors on bad input: the exception type torch.nn raises, and a message naming the module,
what was expected and what was found."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import rnnlab.nn as rnn

# (class, args, kwargs, exception, message pattern, torch raises the same type too)
CONSTRUCTOR_ERRORS = [
    ("LSTM", (3.0, 4), {}, TypeError, r"LSTM: input_size should be of type int, got: float", True),
    ("GRU", (3, "4"), {}, TypeError, r"GRU: hidden_size should be of type int, got: str", True),
    ("RNN", (True, 4), {}, TypeError, r"RNN: input_size should be of type int, got: bool", False),
    ("LSTM", (0, 4), {}, ValueError, r"LSTM: input_size must be greater than zero, got 0", True),
    ("GRU", (3, -2), {}, ValueError, r"GRU: hidden_size must be greater than zero, got -2", True),
    ("RNN", (3, 4), {"num_layers": 0}, ValueError, r"RNN: num_layers must be greater than zero, got 0", True),
    ("LSTM", (3, 4), {"num_layers": 1.5}, TypeError, r"LSTM: num_layers should be of type int, got: float", True),
    ("LSTM", (3, 4), {"proj_size": 1.5}, TypeError, r"LSTM: proj_size should be of type int, got: float", True),
    (
        "LSTM",
        (3, 4),
        {"proj_size": -1},
        ValueError,
        r"LSTM: proj_size should be a positive integer or zero to disable projections, got -1",
        True,
    ),
    (
        "LSTM",
        (3, 4),
        {"proj_size": 4},
        ValueError,
        r"LSTM: proj_size has to be smaller than hidden_size, got proj_size=4 and hidden_size=4",
        True,
    ),
    (
        "GRU",
        (3, 4),
        {"proj_size": 2},
        ValueError,
        r"GRU: proj_size argument is only supported for LSTM, not RNN or GRU",
        True,
    ),
    (
        "RNN",
        (3, 4),
        {"proj_size": 2},
        ValueError,
        r"RNN: proj_size argument is only supported for LSTM, not RNN or GRU",
        True,
    ),
    ("GRU", (3, 4), {"dropout": 1.5}, ValueError, r"GRU: dropout should be a number in range \[0, 1\] .*got 1.5", True),
    (
        "GRU",
        (3, 4),
        {"dropout": -0.1},
        ValueError,
        r"GRU: dropout should be a number in range \[0, 1\] .*got -0.1",
        True,
    ),
    (
        "LSTM",
        (3, 4),
        {"dropout": True},
        ValueError,
        r"LSTM: dropout should be a number in range \[0, 1\] .*got True",
        True,
    ),
    (
        "LSTM",
        (3, 4),
        {"dropout": "0.1"},
        ValueError,
        r"LSTM: dropout should be a number in range \[0, 1\] .*got '0.1'",
        True,
    ),
    (
        "RNN",
        (3, 4),
        {"nonlinearity": "sigmoid"},
        ValueError,
        r"RNN: Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'.",
        True,
    ),
    ("LSTM", (3, 4), {"bias": 1}, TypeError, r"LSTM: bias should be of type bool, got: int", True),
    ("GRU", (3, 4), {"batch_first": "yes"}, TypeError, r"GRU: batch_first should be of type bool, got: str", True),
    (
        "LSTM",
        (3, 4),
        {"impl": "cudnn"},
        ValueError,
        r"LSTM: impl must be one of 'fast', 'fused', 'reference', got 'cudnn'",
        False,
    ),
    (
        "RNNCell",
        (3, 4),
        {"nonlinearity": "gelu"},
        ValueError,
        r"RNNCell: Unknown nonlinearity 'gelu'. Select from 'tanh' or 'relu'.",
        False,
    ),
    ("GRUCell", (3.5, 4), {}, TypeError, r"GRUCell: input_size should be of type int, got: float", True),
    ("LSTMCell", (3, 0), {}, ValueError, r"LSTMCell: hidden_size must be greater than zero, got 0", False),
    ("LSTMCell", (3, 4), {"impl": "x"}, ValueError, r"LSTMCell: impl must be one of", False),
]


@pytest.mark.parametrize(
    "name, args, kwargs, exc, match, torch_too", CONSTRUCTOR_ERRORS, ids=[c[4][:48] for c in CONSTRUCTOR_ERRORS]
)
def test_constructor_errors(name, args, kwargs, exc, match, torch_too) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=match):
            getattr(rnn, name)(*args, **kwargs)
        if torch_too:
            with pytest.raises(exc):
                getattr(nn, name)(*args, **kwargs)


def test_dropout_with_one_layer_warns_like_torch() -> None:
    with pytest.warns(
        UserWarning, match=r"non-zero dropout expects num_layers greater than 1, but got dropout=0.5 and num_layers=1"
    ):
        rnn.GRU(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnn.GRU(3, 4, num_layers=2, dropout=0.5)  # no warning with two layers


def _forward_cases():
    f64 = torch.float64
    lstm, gru, rnn_ = rnn.LSTM(3, 4), rnn.GRU(3, 4, batch_first=True), rnn.RNN(3, 4, num_layers=2, bidirectional=True)
    proj = rnn.LSTM(3, 4, proj_size=2)
    return [
        (gru, (torch.randn(2, 3, 3, 3),), {}, ValueError, r"GRU: Expected input to be 2D or 3D, got 4D instead"),
        (lstm, (torch.randn(3),), {}, ValueError, r"LSTM: Expected input to be 2D or 3D, got 1D instead"),
        (
            lstm,
            (torch.randn(5, 2, 6),),
            {},
            RuntimeError,
            r"LSTM: input.size\(-1\) must be equal to input_size. Expected 3, got 6",
        ),
        (
            gru,
            (torch.randn(5, 3, 3).to(f64),),
            {},
            ValueError,
            r"GRU: input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)",
        ),
        (
            gru,
            (torch.randn(5, 3, 3).long(),),
            {},
            ValueError,
            r"GRU: input dtype \(torch.int64\) does not match weight dtype \(torch.float32\)",
        ),
        (
            rnn_,
            (torch.randn(5, 2, 3), torch.randn(2, 2, 4)),
            {},
            RuntimeError,
            r"RNN: Expected hidden size \(4, 2, 4\), got \[2, 2, 4\]",
        ),
        (
            rnn_,
            (torch.randn(5, 2, 3), torch.randn(4, 4)),
            {},
            RuntimeError,
            r"RNN: For batched 3-D input, hx should also be 3-D but got \(2-D\)",
        ),
        (
            rnn_,
            (torch.randn(5, 3), torch.randn(4, 1, 4)),
            {},
            RuntimeError,
            r"RNN: For unbatched 2-D input, hx should also be 2-D but got \(3-D\)",
        ),
        (
            rnn_,
            (torch.randn(5, 2, 3), torch.randn(4, 2, 4, dtype=f64)),
            {},
            RuntimeError,
            r"RNN: hidden dtype \(torch.float64\) does not match input dtype \(torch.float32\)",
        ),
        (
            proj,
            (torch.randn(5, 2, 3), (torch.randn(1, 2, 4), torch.randn(1, 2, 4))),
            {},
            RuntimeError,
            r"LSTM: Expected hidden\[0\] size \(1, 2, 2\), got \[1, 2, 4\]",
        ),
        (
            proj,
            (torch.randn(5, 2, 3), (torch.randn(1, 2, 2), torch.randn(1, 2, 2))),
            {},
            RuntimeError,
            r"LSTM: Expected hidden\[1\] size \(1, 2, 4\), got \[1, 2, 2\]",
        ),
        (
            lstm,
            (torch.randn(5, 2, 3), torch.randn(1, 2, 4)),
            {},
            TypeError,
            r"LSTM: hx must be a tuple \(h_0, c_0\) of tensors, got Tensor",
        ),
        (
            lstm,
            (torch.randn(5, 2, 3), (torch.randn(1, 2, 4), torch.randn(2, 4))),
            {},
            RuntimeError,
            r"LSTM: For batched 3-D input, hx should also be 3-D but got \(3-D, 2-D\)",
        ),
        (
            lstm,
            (torch.randn(0, 2, 3),),
            {},
            RuntimeError,
            r"LSTM: Expected sequence length to be larger than 0, got input of shape \(0, 2, 3\)",
        ),
        (
            gru,
            (torch.randn(2, 5, 3),),
            {"lengths": torch.tensor([5, 0])},
            ValueError,
            r"GRU: lengths must lie in \[1, 5\] \(the padded sequence length\), got min 0 and max 5",
        ),
        (
            gru,
            (torch.randn(2, 5, 3),),
            {"lengths": torch.tensor([6, 2])},
            ValueError,
            r"GRU: lengths must lie in \[1, 5\] .*got min 2 and max 6",
        ),
        (
            gru,
            (torch.randn(2, 5, 3),),
            {"lengths": torch.tensor([5, 2, 1])},
            ValueError,
            r"GRU: lengths must have shape \(2,\) \(one length per sequence\), got \(3,\)",
        ),
        (
            gru,
            (torch.randn(2, 5, 3),),
            {"lengths": torch.tensor([5.0, 2.0])},
            TypeError,
            r"GRU: lengths must be an integer tensor, got dtype torch.float32",
        ),
        (
            gru,
            (torch.randn(2, 5, 3),),
            {"lengths": [5, 2]},
            TypeError,
            r"GRU: lengths must be a torch.Tensor of shape \(2,\), got list",
        ),
        (
            gru,
            (torch.randn(5, 3),),
            {"lengths": torch.tensor([5])},
            ValueError,
            r"GRU: lengths is only supported for batched \(3-D\) input",
        ),
        (
            gru,
            (pack_sequence([torch.randn(2, 3)]),),
            {"lengths": torch.tensor([2])},
            ValueError,
            r"GRU: lengths must be None for PackedSequence input",
        ),
        (
            gru,
            (pack_sequence([torch.randn(2, 5)]),),
            {},
            RuntimeError,
            r"GRU: input.size\(-1\) must be equal to input_size. Expected 3, got 5",
        ),
        (
            gru,
            (pack_sequence([torch.randn(2, 3), torch.randn(1, 3)]), torch.randn(1, 3, 4)),
            {},
            RuntimeError,
            r"GRU: Expected hidden size \(1, 2, 4\), got \[1, 3, 4\]",
        ),
        (gru, ([1.0, 2.0],), {}, TypeError, r"GRU: input must be a Tensor or a PackedSequence, got list"),
    ]


@pytest.mark.parametrize("case", range(len(_forward_cases())))
def test_forward_errors(case: int) -> None:
    module, args, kwargs, exc, match = _forward_cases()[case]
    with pytest.raises(exc, match=match):
        module(*args, **kwargs)
    if not kwargs and "hx must be a tuple" not in match and "must be a Tensor" not in match:
        ref = module.to_torch()
        with pytest.raises(exc):  # torch.nn raises the same exception type
            ref(*args)


def test_device_mismatch() -> None:
    """Parameters on one device, input or state on another (the meta device stands in for a GPU)."""
    on_meta = rnn.GRU(3, 4, device="meta")
    with pytest.raises(
        RuntimeError,
        match=r"GRU: input and parameter tensors are not on the same device, found input on cpu and parameters on meta",
    ):
        on_meta(torch.randn(5, 2, 3))
    with pytest.raises(RuntimeError):
        nn.GRU(3, 4, device="meta")(torch.randn(5, 2, 3))
    with pytest.raises(RuntimeError, match=r"LSTM: hidden\[0\] is on meta but input is on cpu"):
        rnn.LSTM(3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4, device="meta"), torch.zeros(1, 2, 4)))
    with pytest.raises(RuntimeError, match=r"LSTMCell: input is on cpu but the parameters are on meta"):
        rnn.LSTMCell(3, 4, device="meta")(torch.randn(2, 3))


CELL_CASES = [
    ("GRUCell", (torch.randn(2, 2, 3),), ValueError, r"GRUCell: Expected input to be 1D or 2D, got 3D instead"),
    (
        "RNNCell",
        (torch.randn(2, 3), torch.randn(1, 2, 4)),
        ValueError,
        r"RNNCell: Expected hidden to be 1D or 2D, got 3D instead",
    ),
    (
        "LSTMCell",
        (torch.randn(2, 3), (torch.randn(2, 4), torch.randn(1, 2, 4))),
        ValueError,
        r"LSTMCell: Expected hx\[1\] to be 1D or 2D, got 3D instead",
    ),
    ("LSTMCell", (torch.randn(2, 5),), RuntimeError, r"LSTMCell: input has inconsistent input_size: got 5 expected 3"),
    (
        "GRUCell",
        (torch.randn(2, 3), torch.randn(3, 4)),
        RuntimeError,
        r"GRUCell: Input batch size 2 doesn't match hidden batch size 3",
    ),
    (
        "LSTMCell",
        (torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 5))),
        RuntimeError,
        r"LSTMCell: hx\[1\] has inconsistent hidden_size: got 5, expected 4",
    ),
    (
        "RNNCell",
        (torch.randn(2, 3, dtype=torch.float64),),
        RuntimeError,
        r"RNNCell: input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)",
    ),
    (
        "GRUCell",
        (torch.randn(2, 3), torch.randn(2, 4, dtype=torch.float64)),
        RuntimeError,
        r"GRUCell: hidden dtype \(torch.float64\) does not match input dtype \(torch.float32\)",
    ),
]


@pytest.mark.parametrize("name, args, exc, match", CELL_CASES, ids=[c[3][:40] for c in CELL_CASES])
def test_cell_errors(name, args, exc, match) -> None:
    torch.manual_seed(0)
    with pytest.raises(exc, match=match):
        getattr(rnn, name)(3, 4)(*args)
    with pytest.raises(exc):  # torch.nn raises the same exception type
        getattr(nn, name)(3, 4)(*args)
