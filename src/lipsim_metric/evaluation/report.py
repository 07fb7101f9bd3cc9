"""The report of ``evaluate iqa``: correlations, 2AFC scores, JND mAP and certified figures, as JSON and markdown.

Orientation: every IQA correlation is computed between ``-distance`` (a predicted quality) and the human score
oriented so that higher = better (DMOS negated), so **higher is better for every dataset and every column**; a
distance that tracks human judgement gets a positive SRCC on TID2013 (MOS) and on LIVE (DMOS) alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..certificates import Projection
from .certified_order import certified_order_shares
from .correlation import correlations
from .human_2afc import jnd_average_precision, twoafc_score
from .iqa import EvalTask

__all__ = ["budget_label", "summarize", "to_markdown"]

#: Fewest items a distortion type needs for its own correlations.
MIN_GROUP = 3


def budget_label(eps: float) -> str:
    """``36/255`` for budgets that are a whole number of grey levels but no short decimal (the paper's), else
    ``f"{eps:g}"`` (``0.5``, ``2``, ``0.2``)."""
    k, text = eps * 255, f"{eps:g}"
    return f"{round(k)}/255" if len(text) > 6 and abs(k - round(k)) < 1e-6 else text


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def summarize(task: EvalTask, values: dict[int, list[float]], fields: Sequence[str], budgets: Sequence[float],
              projection: Projection = "append", constant: float = 1.0, use_scipy: bool | None = None
              ) -> dict[str, Any]:
    """The report entry of one metric from its cached values (every item must be present).

    Raises:
        ValueError: items are missing (a shard has not finished).
    """
    missing = [i for i in range(task.n) if i not in values]
    if missing:
        raise ValueError(f"{len(missing)} of {task.n} items have no cached values yet (first: {missing[0]}); "
                         "finish every shard (or run without --shard) before the report")
    table = np.array([values[i] for i in range(task.n)], dtype=np.float64)
    col = {name: table[:, j] for j, name in enumerate(fields)}
    groups = np.asarray(task.groups)
    labels = [budget_label(e) for e in budgets]
    out: dict[str, Any] = {}
    if task.kind == "iqa":
        prediction = -col["distance"]
        out["overall"] = correlations(prediction, task.human, use_scipy)
        out["per_type"] = {g: correlations(prediction[groups == g], task.human[groups == g], use_scipy)
                           for g in dict.fromkeys(task.groups) if (groups == g).sum() >= MIN_GROUP}
        if "norm" in col:
            out["certified_order"] = certified_order_shares(col["distance"], task.human, col["norm"],
                                                            col["input_norm"], task.refs, budgets, projection,
                                                            constant, labels)
    elif task.kind == "2afc":
        score = twoafc_score(col["d0"], col["d1"], task.human)

        def block(mask: np.ndarray) -> dict[str, float]:
            entry = {"n": float(mask.sum()), "natural": _mean(score[mask])}
            if "radius" in col:
                for label, eps in zip(labels, budgets, strict=True):
                    entry[f"certified@{label}"] = _mean((score * (col["radius"] > eps))[mask])
            return entry

        out["per_group"] = {g: block(groups == g) for g in dict.fromkeys(task.groups)}
        # pooling = the size-weighted combination of the groups (the paper's weighting of the NIGHT test splits)
        out["overall"] = block(np.ones(task.n, dtype=bool))
    else:
        out["per_group"] = {g: {"n": float((groups == g).sum()),
                                "map": jnd_average_precision(col["distance"][groups == g], task.human[groups == g])}
                            for g in dict.fromkeys(task.groups)}
        out["overall"] = {"n": float(task.n), "map": jnd_average_precision(col["distance"], task.human)}
    return out


def _cell(value: float, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}" if percent else f"{value:.4f}"


def to_markdown(report: dict[str, Any]) -> str:
    """Markdown tables of a report made by ``evaluate iqa``."""
    kind = report["kind"]
    lines = [f"Dataset `{report['dataset']}` ({report['n_items']} items; {report['human']}); "
             f"{report['machine']}, {report['date']}.", ""]
    metrics = report["metrics"]
    if kind == "iqa":
        lines += ["Correlations of -distance with the human score oriented higher = better (higher is better in "
                  "every column).", "", "| metric | n | SRCC | KRCC | PLCC | PLCC fit |",
                  "|---|---:|---:|---:|---:|---|"]
        for name, m in metrics.items():
            o = m["overall"]
            lines.append(f"| {name} | {o['n']} | {_cell(o['srcc'])} | {_cell(o['krcc'])} | {_cell(o['plcc'])} | "
                         f"{o['plcc_method']} |")
        types = list(dict.fromkeys(t for m in metrics.values() for t in m["per_type"]))
        lines += ["", "SRCC per distortion type:", "", "| type | " + " | ".join(metrics) + " |",
                  "|---|" + "---:|" * len(metrics)]
        for t in types:
            row = [_cell(m["per_type"].get(t, {}).get("srcc", float("nan"))) for m in metrics.values()]
            lines.append(f"| {t} | " + " | ".join(row) + " |")
        for name, m in metrics.items():
            if "certified_order" not in m:
                continue
            keys = [k for k in m["certified_order"]["pooled"] if k.startswith("certified_concordant@")]
            lines += ["", f"{name}: share of pairs (distinct human scores) ordered as the humans order them, "
                      "naturally and certified against any l2 perturbation of every distorted image (%):", "",
                      "| pairs | n | concordant | " + " | ".join(k.replace("certified_concordant@", "certified ")
                                                              for k in keys) + " |",
                      "|---|---:|---:|" + "---:|" * len(keys)]
            for scope, block in m["certified_order"].items():
                cells = " | ".join(_cell(block[k], True) for k in keys)
                lines.append(f"| {scope} | {int(block['pairs'])} | {_cell(block['concordant'], True)} | {cells} |")
    else:
        value = "natural" if kind == "2afc" else "map"
        columns = list(dict.fromkeys(k for m in metrics.values() for k in m["overall"] if k not in ("n",)))
        columns = [value] + [k for k in columns if k != value]
        lines += ["2AFC score: share of humans agreeing with the metric, %." if kind == "2afc" else
                  "JND: mean average precision of 'small distance = judged the same', %.", "",
                  "| metric | group | n | " + " | ".join(columns) + " |", "|---|---|---:|" + "---:|" * len(columns)]
        for name, m in metrics.items():
            for group, block in [*m["per_group"].items(), ("all (size-weighted)", m["overall"])]:
                cells = " | ".join(_cell(block.get(k, float("nan")), True) for k in columns)
                lines.append(f"| {name} | {group} | {int(block['n'])} | {cells} |")
    lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"
