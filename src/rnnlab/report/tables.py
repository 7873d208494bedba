"""The results table, as markdown (for people) and CSV (for programs)."""

from __future__ import annotations

import csv
import io

from rnnlab.report.aggregate import ExperimentSummary, Stat

CSV_COLUMNS = [
    "experiment",
    "kind",
    "status",
    "seeds",
    "n_seeds",
    "epochs",
    "final_test_acc_mean",
    "final_test_acc_std",
    "best_test_acc_mean",
    "best_test_acc_std",
    "best_epochs",
    "final_test_loss_mean",
    "final_test_loss_std",
    "num_params",
    "median_epoch_seconds",
    "original_epoch",
    "original_final_test_acc",
    "original_best_test_acc",
    "diff_final_test_acc",
    "note",
]


def _fmt(stat: Stat | None, digits: int = 4) -> str:
    if stat is None:
        return ""
    if stat.std is None:
        return f"{stat.mean:.{digits}f}"
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}"


def _points(diff: float) -> str:
    """A difference of accuracies in percentage points: +0.0123 -> '+1.23'."""
    return f"{100 * diff:+.2f}"


def _seeds(s: ExperimentSummary) -> str:
    return " ".join("?" if x is None else str(x) for x in s.seeds)


def _incomplete_text(s: ExperimentSummary) -> str:
    parts = []
    for r in s.incomplete:
        seed = "?" if r.seed is None else r.seed
        parts.append(f"seed {seed}: {r.problem} ({r.path})")
    return "; ".join(parts)


def markdown_table(summaries: list[ExperimentSummary]) -> str:
    """A markdown table: one row per experiment with results, one per experiment with incomplete runs.

    Accuracies are mean ± sample std over seeds; Δ is the difference from the original's
    final-epoch test accuracy in percentage points (those two columns only when an experiment
    has an original result on the same data: on IMDB, with one of the original's names).
    """
    with_original = any(s.original for s in summaries)  # not on own data, nor for new experiments
    header = [
        "experiment",
        "seeds",
        "final test acc",
        "best test acc (epoch)",
        "final test loss",
        "params",
        "s/epoch",
    ] + (["original final (best)", "Δ final (pt)"] if with_original else [])
    shorter = sorted({s.epochs for s in summaries if s.original and s.epochs and s.epochs < len(s.original.test_acc)})
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for s in summaries:
        if s.has_results:
            orig = s.original.at(s.epochs) if s.original else None
            mark = "*" if orig and s.original and s.epochs != len(s.original.test_acc) else ""
            best_epochs = ",".join(str(e) for e in s.best_epochs)
            cells = [
                f"`{s.name}`",
                str(len(s.runs)),
                _fmt(s.final_acc),
                f"{_fmt(s.best_acc)} ({best_epochs})",
                _fmt(s.final_loss),
                f"{s.num_params:,}" if s.num_params is not None else "",
                f"{s.epoch_seconds:.1f}" if s.epoch_seconds is not None and s.kind != "baseline" else "",
            ]
            if with_original:
                cells.append(f"{orig[0]:.4f} ({orig[1]:.4f}){mark}" if orig else "")
                cells.append(_points(s.final_acc.mean - orig[0]) if orig and s.final_acc else "")
            lines.append("| " + " | ".join(cells) + " |")
        if s.incomplete:
            cells = [f"`{s.name}`", f"{len(s.incomplete)} incomplete"] + ["—"] * (len(header) - 2)
            lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if shorter:
        notes.append(
            f"- \\* runs of {', '.join(map(str, shorter))} epoch(s): compared with the original's "
            "test accuracy after the same number of epochs (it ran 5)"
        )
    for s in summaries:
        if s.runs and all(r.test_once for r in s.runs):
            notes.append(
                f"- `{s.name}`: tested once per seed, on the checkpoint with the best validation accuracy "
                "(`test_every_epoch = false`): *final* and *best* are that one test result and the "
                "epoch is the one validation chose, never picked on the test set"
            )
        if s.incomplete:
            notes.append(f"- `{s.name}`: incomplete runs, not counted: {_incomplete_text(s)}")
        for note in s.notes:
            notes.append(f"- `{s.name}`: {note}")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    return text


def csv_table(summaries: list[ExperimentSummary]) -> str:
    """The same rows as :func:`markdown_table`, unrounded, with empty cells for missing values."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()

    def num(x: float | int | None) -> str:
        return "" if x is None else repr(x)

    for s in summaries:
        orig = s.original.at(s.epochs) if s.original else None
        if s.has_results:
            assert s.final_acc is not None and s.best_acc is not None and s.final_loss is not None
            writer.writerow(
                {
                    "experiment": s.name,
                    "kind": s.kind,
                    "status": "complete",
                    "seeds": _seeds(s),
                    "n_seeds": len(s.runs),
                    "epochs": num(s.epochs),
                    "final_test_acc_mean": num(s.final_acc.mean),
                    "final_test_acc_std": num(s.final_acc.std),
                    "best_test_acc_mean": num(s.best_acc.mean),
                    "best_test_acc_std": num(s.best_acc.std),
                    "best_epochs": " ".join(str(e) for e in s.best_epochs),
                    "final_test_loss_mean": num(s.final_loss.mean),
                    "final_test_loss_std": num(s.final_loss.std),
                    "num_params": num(s.num_params),
                    "median_epoch_seconds": num(s.epoch_seconds if s.kind != "baseline" else None),
                    "original_epoch": num(s.epochs if orig else None),
                    "original_final_test_acc": num(orig[0] if orig else None),
                    "original_best_test_acc": num(orig[1] if orig else None),
                    "diff_final_test_acc": num(s.final_acc.mean - orig[0] if orig else None),
                    "note": "; ".join(s.notes),
                }
            )
        if s.incomplete:
            writer.writerow(
                {
                    "experiment": s.name,
                    "kind": s.kind,
                    "status": "incomplete",
                    "seeds": " ".join("?" if r.seed is None else str(r.seed) for r in s.incomplete),
                    "n_seeds": len(s.incomplete),
                    "note": _incomplete_text(s),
                }
            )
    return out.getvalue()
