"""``explain_texts``: a trained run's prediction for each text, each token's Integrated Gradients
attribution, and (LSTM, GRU) every gate and state norm at every token, as plain data.

The result is a JSON-ready dict (:func:`explain_texts`); ``rnnlab.explain.html`` and
``rnnlab.explain.figures`` draw it. Per text:

- ``tokens``: every token of the text with its vocabulary ``id``, ``known`` (in the
  vocabulary, else read as ``<unk>``), ``read`` (False beyond ``max_len``, cut by the run's
  ``truncate`` rule), ``position`` in the model's input (None when not read) and ``attribution``;
- ``output`` / ``baseline_output``: the log-odds of the predicted class, ``log(p / (1 - p))``,
  on the text and on the all-padding baseline (``rnnlab.explain.attribution``);
  ``attribution_sum``; ``delta`` = attribution_sum - (output - baseline_output);
- ``layers``: per (layer, direction), in the model's order: ``gates`` {name: (T, H) values at
  the T read tokens}, ``h_norm`` (T,) = ||h_t||_2 and ``c_norm`` (T,) = ||c_t||_2 (LSTM).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rnnlab.explain.attribution import integrated_gradients
from rnnlab.explain.runs import ExplainedRun, ExplainError, check_parity
from rnnlab.nn import trace

__all__ = ["DEFAULT_STEPS", "explain_texts", "kept_positions", "write_explanation"]

#: Gauss-Legendre points of the Integrated Gradients integral.
DEFAULT_STEPS = 64
_DIGITS = 6  # significant digits kept in the JSON numbers


def kept_positions(n: int, max_len: int | None, truncate: str) -> list[int]:
    """Indices of the tokens of an n-token text that the model reads, as ``rnnlab.data`` cuts it:
    ``head`` the first max_len, ``tail`` the last max_len, ``head_tail`` the first max_len // 4
    and the last max_len - max_len // 4."""
    if max_len is None or n <= max_len:
        return list(range(n))
    if truncate == "head":
        return list(range(max_len))
    if truncate == "tail":
        return list(range(n - max_len, n))
    if truncate == "head_tail":
        head = max_len // 4
        return list(range(head)) + list(range(n - (max_len - head), n))
    raise ValueError(f"truncate must be head, tail or head_tail, got {truncate!r}")


def _num(x: float) -> float:
    return float(f"{x:.{_DIGITS}g}") if math.isfinite(x) else x


def _nums(t: torch.Tensor) -> list:
    return [_nums(r) for r in t] if t.dim() > 1 else [_num(float(v)) for v in t]


def _encode(run: ExplainedRun, texts: Sequence[str]) -> list[dict[str, Any]]:
    """Tokens, ids and read positions of each text; ExplainError for a text it cannot explain."""
    from rnnlab.data import encode_texts

    r, config = run.run, run.config
    encoded = []
    if not texts:
        raise ExplainError("no text given: pass one or more texts to explain")
    for k, text in enumerate(texts, 1):
        shown = text if len(text) <= 40 else text[:37] + "..."
        tokens = r.tokenizer.tokenize(text)
        if not tokens:
            raise ExplainError(f"text {k} ({shown!r}) is empty: it has no words to explain")
        ids_all = r.vocab.encode(tokens)
        kept = kept_positions(len(tokens), config.max_len, config.truncate)
        if all(ids_all[i] == r.vocab.unk_id for i in kept):
            raise ExplainError(
                f"text {k} ({shown!r}) has no known word: none of the {len(kept)} words the model reads is in "
                f"the run's vocabulary of {len(r.vocab)} ids"
            )
        ids, lengths = encode_texts([text], r.tokenizer, r.vocab, max_len=config.max_len, truncate=config.truncate)
        if ids[0, : int(lengths[0])].tolist() != [ids_all[i] for i in kept]:  # the rule above is rnnlab.data's
            raise RuntimeError(f"text {k}: the read tokens disagree with rnnlab.data.encode_texts")
        encoded.append(
            {"text": text, "tokens": tokens, "ids_all": ids_all, "kept": kept, "ids": ids[:, : int(lengths[0])]}
        )
    return encoded


def _probabilities(out: torch.Tensor, loss: str) -> torch.Tensor:
    return out.exp() if loss == "nll" else out.softmax(-1)


def _layers(run: ExplainedRun, ids: torch.Tensor, lengths: torch.Tensor) -> list[dict[str, Any]]:
    """Gates and state norms of every (layer, direction) at every read token (trace mode)."""
    with torch.no_grad(), trace(run.model.encoder) as t:
        run.model(ids, lengths)
    layers = []
    for lt in t.layers:
        layers.append(
            {
                "name": lt.name,
                "layer": lt.layer,
                "direction": lt.direction,
                "gates": {g: _nums(v[:, 0]) for g, v in lt.gates.items()},
                "h_norm": _nums(lt.h[:, 0].norm(dim=-1)),
                "c_norm": None if lt.c is None else _nums(lt.c[:, 0].norm(dim=-1)),
            }
        )
    return layers


def explain_texts(run: ExplainedRun, texts: Sequence[str], *, steps: int = DEFAULT_STEPS) -> dict[str, Any]:
    """Explain each text with a run opened by ``rnnlab.explain.open_run`` (see the module doc).

    Every text is checked before any work: an empty text, or one whose read words are all
    unknown to the vocabulary, raises ExplainError.
    """
    r, config = run.run, run.config
    texts = list(texts)
    encoded = _encode(run, texts)
    parity = None
    results = []
    for enc in encoded:
        ids = enc["ids"]
        lengths = torch.tensor([ids.shape[1]])
        if run.model is not r.model:
            parity = max(parity or 0.0, check_parity(r.model, run.model, ids, lengths))
        attr = integrated_gradients(run.model, ids, lengths, steps=steps)
        with torch.no_grad():
            probs = _probabilities(run.model(ids, lengths), config.loss)[0].double()
        k = int(attr.target[0])
        position = {i: p for p, i in enumerate(enc["kept"])}
        tokens = []
        for i, (tok, tid) in enumerate(zip(enc["tokens"], enc["ids_all"])):
            p = position.get(i)
            tokens.append(
                {
                    "token": tok,
                    "id": tid,
                    "known": tid != r.vocab.unk_id,
                    "read": p is not None,
                    "position": p,
                    "attribution": None if p is None else _num(float(attr.tokens[0, p])),
                }
            )
        results.append(
            {
                "text": enc["text"],
                "label": r.label_names[k],
                "label_id": k,
                "probability": _num(float(probs[k])),
                "probabilities": {name: _num(float(probs[c])) for c, name in enumerate(r.label_names)},
                "output": _num(float(attr.output[0])),
                "baseline_output": _num(float(attr.baseline_output[0])),
                "attribution_sum": _num(float(attr.tokens[0].sum())),
                "delta": _num(float(attr.delta[0])),
                "tokens_read": len(enc["kept"]),
                "tokens_not_read": len(enc["tokens"]) - len(enc["kept"]),
                "tokens": tokens,
                "layers": _layers(run, ids, lengths),
            }
        )
    return {
        "run_dir": str(r.run_dir),
        "name": config.name,
        "cell": config.cell,
        "encoder": config.encoder,
        "pooling": config.pooling,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "bidirectional": config.bidirectional,
        "max_len": config.max_len,
        "truncate": config.truncate,
        "checkpoint": r.checkpoint.name,
        "epoch": r.epoch,
        "label_names": list(r.label_names),
        "output_kind": "log-odds",
        "ig_steps": steps,
        "baseline": "all padding (<pad>, id 0), same length",
        "parity_max_abs_diff": parity,
        "texts": results,
    }


def write_explanation(result: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``explain.html`` (self-contained), ``explain.json`` and the PNG figures into ``out_dir``.

    PNGs per text k (1-based): ``text{k}_attribution.png`` and, per (layer, direction),
    ``text{k}_layer{l}[_reverse].png`` (gate heatmaps and state norms). Each file is replaced
    atomically; other files in ``out_dir`` are left alone. Returns the paths written.
    """
    from rnnlab._io import write_json, write_text
    from rnnlab.explain.figures import attribution_figure, gates_figure, save_png
    from rnnlab.explain.html import render_explanation

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExplainError(f"--out {out} is a file; expected a folder for explain.html and the figures")
    page = render_explanation(result)  # everything is computed before the first file is written
    figures = []
    for k, text in enumerate(result["texts"], 1):
        figures.append((f"text{k}_attribution.png", attribution_figure(text)))
        for layer in text["layers"]:
            name = f"text{k}_layer{layer['layer']}" + ("_reverse" if layer["direction"] else "")
            figures.append((name + ".png", gates_figure(text, layer, result["cell"])))
    out.mkdir(parents=True, exist_ok=True)
    written = [save_png(fig, out / name) for name, fig in figures]
    write_json(out / "explain.json", result)
    write_text(out / "explain.html", page)
    return [out / "explain.html", out / "explain.json", *written]
