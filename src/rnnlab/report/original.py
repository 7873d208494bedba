"""The original assignment's results (one seed each, IMDB, 5 epochs), keyed by experiment name.

``final`` is the test accuracy after the last (5th) epoch, ``best`` the highest test accuracy
over the five epochs and ``best_epoch`` the epoch that reached it (1-based). Source: the
training logs in the original assignment (``shared/seed/000_59210ae126b00e07.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OriginalResult:
    description: str
    final: float
    best: float
    best_epoch: int


ORIGINAL_RESULTS: dict[str, OriginalResult] = {
    "lstm": OriginalResult("torch.nn.LSTM", 0.8546, 0.8546, 5),
    "rnn": OriginalResult("torch.nn.RNN", 0.8503, 0.8503, 5),
    "gru": OriginalResult("torch.nn.GRU", 0.8576, 0.8576, 5),
    "handwritten_lstm": OriginalResult("hand-written LSTM", 0.8570, 0.8570, 5),
    "handwritten_lstm_128": OriginalResult("hand-written LSTM, embedding and hidden 128", 0.8582, 0.8610, 4),
    "handwritten_lstm_nll": OriginalResult("hand-written LSTM, log_softmax + NLLLoss", 0.8527, 0.8534, 4),
    "handwritten_lstm_b128_lr5e-3": OriginalResult("hand-written LSTM, batch 128, lr 5e-3", 0.8539, 0.8715, 2),
}
