"""The recurrent text classifier: embedding -> recurrent encoder -> masked pooling -> MLP head.

Shapes: N batch, L padded length, E embedding_dim, H hidden_size, D = 2 if bidirectional
else 1, C classes. ``ids (N, L)`` are right-padded with 0 and ``lengths (N,)`` >= 1 are the
true lengths; no pooling ever reads a padded step, so padding never changes a prediction.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnlab.models.wide import WideNgrams
from rnnlab.nn.options import OPTION_DEFAULTS

POOLINGS = ("last", "mean", "max", "meanmax")
_CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
#: Config ``encoder`` -> the ``impl`` keyword of rnnlab.nn's layers (which of its code paths runs).
_RNNLAB_IMPLS = {"rnnlab": "fast", "reference": "reference"}


def lengths_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(N,)`` lengths -> ``(L, N)`` bool mask, True at real steps ``t < lengths[n]``."""
    steps = torch.arange(max_len, device=lengths.device)
    return steps[:, None] < lengths[None, :]


def masked_pool(out: torch.Tensor, lengths: torch.Tensor, pooling: str, num_directions: int = 1) -> torch.Tensor:
    """Pool time-major encoder outputs over each sequence's real steps only.

    out: ``(L, N, D*H)``; lengths: ``(N,)`` on ``out``'s device. Returns ``(N, D*H)``, or
    ``(N, 2*D*H)`` for ``meanmax``:

    - ``last``: the forward direction at step ``lengths[n] - 1``; with D = 2 the backward
      direction at step 0 (where it ends), i.e. both directions' final states;
    - ``mean``: ``sum_{t < len} out_t / len``;
    - ``max``: ``max_{t < len} out_t`` (padded steps set to -inf first);
    - ``meanmax``: ``[mean ; max]``.
    """
    L, N, width = out.shape
    if pooling == "last":
        idx = (lengths - 1).clamp(min=0).view(1, N, 1).expand(1, N, width)
        last = out.gather(0, idx).squeeze(0)  # (N, D*H)
        if num_directions == 2:
            h = width // 2
            last = torch.cat([last[:, :h], out[0, :, h:]], dim=1)
        return last
    mask = lengths_mask(lengths, L).unsqueeze(-1)  # (L, N, 1)
    if pooling in ("mean", "meanmax"):
        mean = out.masked_fill(~mask, 0.0).sum(0) / lengths.to(out.dtype).unsqueeze(1)  # (N, D*H)
        if pooling == "mean":
            return mean
    if pooling in ("max", "meanmax"):
        mx = out.masked_fill(~mask, float("-inf")).amax(0)  # (N, D*H)
        if pooling == "max":
            return mx
        return torch.cat([mean, mx], dim=1)
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")


#: Multiplier of the bigram hash (a prime, so that (prev, cur) pairs spread over the buckets).
_BIGRAM_PRIME = 1_000_003


def bigram_ids(ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """Hashed bigram ids ``(N, L)`` of word ids ``(N, L)``, in 1..buckets; 0 at padding.

    Position t holds the bigram ``(ids[t-1], ids[t])`` (``ids[-1]`` = 0, the padding id, so
    position 0 is the pair (start, first word)):
    ``b_t = (ids[t-1] * 1000003 + ids[t]) mod buckets + 1``. Different pairs can share a
    bucket (the hashing trick, as in fastText); the mapping is fixed, so it needs no vocabulary.
    """
    prev = F.pad(ids, (1, 0))[:, :-1]
    return ((prev * _BIGRAM_PRIME + ids) % buckets + 1).masked_fill(ids == 0, 0)


def make_encoder(
    cell: str,
    encoder: str,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    nonlinearity: str = "tanh",
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """A time-major recurrent layer: torch.nn's (``encoder="torch"``) or rnnlab.nn's (``rnnlab``: its fast
    path, ``reference``: its gate-by-gate form, i.e. ``rnnlab.nn``'s ``impl="fast"`` / ``"reference"``).

    ``options``: rnnlab.nn cell options (``layer_norm=True``, ``weight_drop=0.3``...); those at
    their default are left out, so the default layer prints as before; torch.nn has none.
    """
    if cell not in _CELLS:
        raise ValueError(f"cell must be one of {', '.join(_CELLS)}; got {cell!r}")
    kwargs: dict[str, Any] = {}
    if num_layers != 1:
        kwargs["num_layers"] = num_layers
    if bidirectional:
        kwargs["bidirectional"] = True
    if dropout:
        kwargs["dropout"] = dropout
    if cell == "rnn" and nonlinearity != "tanh":
        kwargs["nonlinearity"] = nonlinearity
    unknown = sorted(set(options or {}) - set(OPTION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown layer option(s) {', '.join(unknown)}; valid: {', '.join(OPTION_DEFAULTS)}")
    on = {k: v for k, v in (options or {}).items() if v != OPTION_DEFAULTS[k]}
    if encoder == "torch":
        if on:
            raise ValueError(f"encoder='torch': torch.nn.{_CELLS[cell]} has no {', '.join(on)}; use encoder='rnnlab'")
        return getattr(nn, _CELLS[cell])(input_size, hidden_size, **kwargs)
    if encoder not in _RNNLAB_IMPLS:
        raise ValueError(f"encoder must be one of rnnlab, reference, torch; got {encoder!r}")
    try:
        import rnnlab.nn as rnn_modules

        layer_cls = getattr(rnn_modules, _CELLS[cell])
    except (ImportError, AttributeError) as err:
        raise RuntimeError(
            f"encoder={encoder!r} needs rnnlab.nn.{_CELLS[cell]}, which is not available ({err}); use encoder='torch'"
        ) from err
    return layer_cls(input_size, hidden_size, impl=_RNNLAB_IMPLS[encoder], **kwargs, **on)


def drop_words(ids: torch.Tensor, p: float, unk_id: int = 1) -> torch.Tensor:
    """Word dropout: ``ids (N, L)`` with each real token (id != 0, the padding) replaced by
    ``unk_id`` with probability ``p``, independently (draws from torch's global generator).

    Unlike element-wise dropout on the embeddings, the model loses whole words, as if they
    were out of its vocabulary, so it cannot lean on a few strong words in a review.
    """
    drop = (torch.rand(ids.shape, device=ids.device) < p) & (ids != 0)
    return ids.masked_fill(drop, unk_id)


class RNNClassifier(nn.Module):
    """``ids (N, L), lengths (N,) -> logits (N, C)`` (log-probabilities when ``log_softmax``).

    embedding ``(L, N, E)`` (plus a hashed bigram embedding when ``bigram_buckets`` > 0,
    see :func:`bigram_ids`; in training, ``word_dropout`` p replaces each real token by
    ``<unk>`` (id 1) with probability p before the lookup, see :func:`drop_words`) -> encoder
    ``(L, N, D*H)`` (with rnnlab.nn's cell options ``layer_options``, see :func:`make_encoder`)
    -> masked pooling ``(N, P)`` with P = D*H (2*D*H for meanmax) -> linear1
    ``(N, D*H)`` -> ReLU -> linear2 ``(N, C)``; with ``wide`` (the keywords of
    :class:`~rnnlab.models.wide.WideNgrams`, ``ngrams`` >= 1) the wide part's ``(N, C)`` logits over
    the review's NB-weighted n-gram indicators are added (its table: :meth:`fit_wide`, training split only).

    The encoder attribute is named after the cell (``lstm``, ``rnn``, ``gru``), and the
    default model prints exactly as the original experiment's ``ImdbNet``; optional
    dropouts and non-default pooling appear in the printout only when used.

    Padding: a unidirectional encoder runs over the padded batch (outputs at real steps do
    not depend on later padding, and pooling reads real steps only); a bidirectional one gets
    ``lengths=`` (rnnlab) or a packed sequence (torch.nn), so that its reverse direction
    starts at each sequence's last real step.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        cell: str = "lstm",
        encoder: str = "rnnlab",
        embedding_dim: int = 64,
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        head_dropout: float = 0.0,
        nonlinearity: str = "tanh",
        pooling: str = "last",
        log_softmax: bool = False,
        bigram_buckets: int = 0,
        word_dropout: float = 0.0,
        layer_options: dict[str, Any] | None = None,
        wide: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
        if vocab_size < 2 or num_classes < 2:
            raise ValueError(f"need vocab_size >= 2 and num_classes >= 2; got {vocab_size} and {num_classes}")
        self.cell, self.encoder_kind, self.pooling = cell, encoder, pooling
        self.num_directions = 2 if bidirectional else 1
        self.log_softmax = log_softmax
        enc_width = hidden_size * self.num_directions
        pooled = 2 * enc_width if pooling == "meanmax" else enc_width

        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        self.word_dropout = float(word_dropout)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.bigram_buckets = int(bigram_buckets)
        if self.bigram_buckets < 0:
            raise ValueError(f"bigram_buckets must be >= 0, got {bigram_buckets}")
        if self.bigram_buckets:
            self.bigram_embedding = nn.Embedding(self.bigram_buckets + 1, embedding_dim, padding_idx=0)
        if embedding_dropout:
            self.embedding_dropout = nn.Dropout(embedding_dropout)
        setattr(
            self,
            cell,
            make_encoder(
                cell,
                encoder,
                embedding_dim,
                hidden_size,
                num_layers=num_layers,
                bidirectional=bidirectional,
                dropout=dropout,
                nonlinearity=nonlinearity,
                options=layer_options,
            ),
        )
        self.linear1 = nn.Linear(pooled, enc_width)
        self.act1 = nn.ReLU()
        if head_dropout:
            self.head_dropout = nn.Dropout(head_dropout)
        self.linear2 = nn.Linear(enc_width, num_classes)
        #: The deep part's logits ``(N, C)`` of the last forward in training mode (with a wide part), else None.
        self.deep_logits: torch.Tensor | None = None
        if wide and wide.get("ngrams", 0):
            self.wide = WideNgrams(vocab_size, num_classes, **wide)

    def fit_wide(self, split: Any) -> None:
        """Build the wide part's n-gram table and ratios from the **training** split (an ``EncodedSplit``)."""
        if hasattr(self, "wide"):
            self.wide.fit(split.ids, split.labels)

    def resize_for_state(self, state: dict[str, torch.Tensor]) -> None:
        """Shape the wide part like a checkpoint's (its table size depends on the training data)."""
        if hasattr(self, "wide"):
            self.wide.resize_for_state(state, "wide.")

    @property
    def encoder(self) -> nn.Module:
        return getattr(self, self.cell)

    def _get_name(self) -> str:
        return "ImdbNet"  # the original experiment's printed name

    def extra_repr(self) -> str:
        parts = []
        if self.pooling != "last":
            parts.append(f"pooling={self.pooling}")
        if self.log_softmax:
            parts.append("log_softmax=True")
        if self.word_dropout:
            parts.append(f"word_dropout={self.word_dropout}")
        return ", ".join(parts)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``ids (N, L), lengths (N,) -> pooled features (N, P)``."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be (N, L), got shape {tuple(ids.shape)}")
        if lengths.shape != ids.shape[:1]:
            raise ValueError(f"lengths must be (N,) = ({ids.shape[0]},), got {tuple(lengths.shape)}")
        if self.word_dropout and self.training:
            ids = drop_words(ids, self.word_dropout)
        x = self.embedding(ids.t())  # (L, N, E)
        if self.bigram_buckets:
            x = x + self.bigram_embedding(bigram_ids(ids, self.bigram_buckets).t())  # word + bigram (L, N, E)
        if hasattr(self, "embedding_dropout"):
            x = self.embedding_dropout(x)
        lengths_dev = lengths.to(x.device)
        if self.num_directions == 1:
            # Outputs at real steps never depend on the padding after them, and the pooling
            # reads real steps only: the padded batch needs no lengths (and no sort).
            out, _ = self.encoder(x)  # (L, N, H)
        elif self.encoder_kind == "torch":
            packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
            out, _ = pad_packed_sequence(self.encoder(packed)[0], total_length=x.shape[0])  # (L, N, 2H)
        else:
            out, _ = self.encoder(x, lengths=lengths_dev)  # (L, N, 2H)
        return masked_pool(out, lengths_dev, self.pooling, self.num_directions)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.linear1(self.encode(ids, lengths)))  # (N, D*H)
        if hasattr(self, "head_dropout"):
            h = self.head_dropout(h)
        logits = self.linear2(h)  # (N, C)
        if hasattr(self, "wide"):
            self.deep_logits = logits if self.training else None  # for the trainer's deep_loss_weight term
            logits = logits + self.wide(ids)  # wide and deep: one logit, trained jointly
        return F.log_softmax(logits, dim=-1) if self.log_softmax else logits


def build_model(config: Any, vocab_size: int, num_classes: int) -> RNNClassifier:
    """The classifier described by a ``rnnlab.train.Config`` (or any object with its fields)."""
    return RNNClassifier(
        vocab_size,
        num_classes,
        cell=config.cell,
        encoder=config.encoder,
        embedding_dim=config.embedding_dim,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        dropout=config.dropout,
        embedding_dropout=config.embedding_dropout,
        head_dropout=config.head_dropout,
        nonlinearity=config.nonlinearity,
        pooling=config.pooling,
        log_softmax=config.loss == "nll",
        bigram_buckets=getattr(config, "bigram_buckets", 0),
        word_dropout=getattr(config, "word_dropout", 0.0),
        layer_options={k: getattr(config, k, default) for k, default in OPTION_DEFAULTS.items()},
        wide=wide_options(config),
    )


def wide_options(config: Any) -> dict[str, Any] | None:
    """The :class:`~rnnlab.models.wide.WideNgrams` keywords of a config (None: no wide part)."""
    if not getattr(config, "wide_ngrams", 0):
        return None
    return {
        "ngrams": config.wide_ngrams,
        "min_count": config.wide_min_count,
        "alpha": config.wide_alpha,
        "dropout": config.wide_dropout,
        "init": config.wide_init,
    }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
