"""See inside a trained run: ``rnnlab explain`` and ``rnnlab study gradients``.

    from rnnlab.explain import open_run, explain_texts, write_explanation, run_gradient_study
    run = open_run("runs/lstm")                               # a finished run, rnnlab.nn form
    result = explain_texts(run, ["A wonderful film."])        # attributions, gates, state norms
    write_explanation(result, "explain/")                     # explain.html (one file), JSON, PNGs
    run_gradient_study(["runs/rnn", "runs/lstm"], "study/")   # connectivity and gate saturation

Attributions: Integrated Gradients (Captum) of the predicted label's log-odds on the embedding
layer (``rnnlab.explain.attribution``); gates and states: the run's own cells in trace mode
(``rnnlab.nn.trace``); runs trained with ``encoder = "torch"`` go through an rnnlab.nn copy with
the same weights (``rnnlab.explain.runs``).
"""

from rnnlab.explain.explain import explain_texts, kept_positions, write_explanation
from rnnlab.explain.runs import ExplainedRun, ExplainError, open_run
from rnnlab.explain.study import run_gradient_study

__all__ = [
    "ExplainError",
    "ExplainedRun",
    "explain_texts",
    "kept_positions",
    "open_run",
    "run_gradient_study",
    "write_explanation",
]
