"""The original assignment's results (one seed each, IMDB, 5 epochs), keyed by experiment name.

``test_acc[e - 1]`` is the test accuracy after epoch e (five epochs each); ``final`` is the
last, ``best`` the highest and ``best_epoch`` the epoch that reached it (1-based). A run with
fewer epochs is compared with the original at the same epoch (:meth:`OriginalResult.at`). Source: the
training logs in the original assignment (``shared/seed/000_59210ae126b00e07.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OriginalResult:
    """One original experiment: its test accuracy after each of its five epochs."""

    description: str
    test_acc: tuple[float, ...]

    @property
    def final(self) -> float:
        return self.test_acc[-1]

    @property
    def best(self) -> float:
        return max(self.test_acc)

    @property
    def best_epoch(self) -> int:
        return self.test_acc.index(self.best) + 1

    def at(self, epochs: int | None) -> tuple[float, float] | None:
        """(test accuracy after ``epochs`` epochs, best over those epochs), or None beyond the original's."""
        if epochs is None or not 1 <= epochs <= len(self.test_acc):
            return None
        return self.test_acc[epochs - 1], max(self.test_acc[:epochs])


ORIGINAL_RESULTS: dict[str, OriginalResult] = {
    "lstm": OriginalResult("torch.nn.LSTM", (0.7848, 0.8277, 0.8483, 0.8505, 0.8546)),
    "rnn": OriginalResult("torch.nn.RNN", (0.7696, 0.8210, 0.8402, 0.8463, 0.8503)),
    "gru": OriginalResult("torch.nn.GRU", (0.8056, 0.8428, 0.8554, 0.8572, 0.8576)),
    "handwritten_lstm": OriginalResult("hand-written LSTM", (0.7625, 0.8240, 0.8410, 0.8528, 0.8570)),
    "handwritten_lstm_128": OriginalResult(
        "hand-written LSTM, embedding and hidden 128", (0.8157, 0.8477, 0.8491, 0.8610, 0.8582)
    ),
    "handwritten_lstm_nll": OriginalResult(
        "hand-written LSTM, log_softmax + NLLLoss", (0.7838, 0.8234, 0.8471, 0.8534, 0.8527)
    ),
    "handwritten_lstm_b128_lr5e-3": OriginalResult(
        "hand-written LSTM, batch 128, lr 5e-3", (0.8379, 0.8715, 0.8645, 0.8566, 0.8539)
    ),
}
