"""What the robustness report writes besides ``results.json``: accuracy plots, distance histograms, the markdown
table, and the figure of an adversarial triplet (matplotlib's object API only: no global backend state).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..metric import LipSim
from .attacks import (
    DistanceFn,
    attack_2afc,
    perturbation_norm,
)
from .robustness_experiments import AttackConfig, eps_label

# ----------------------------------------------------------------------------------------------------------------
# Plots, tables, figure
# ----------------------------------------------------------------------------------------------------------------


def _plot_accuracy(result: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, norm in zip(axes, ("l2", "linf"), strict=True):
        scale = 255.0 if norm == "linf" else 1.0
        for name, res in result["metrics"].items():
            eps = [0.0] + [float(e) for e in res[norm]]
            acc = [res["natural"]] + list(res[norm].values())
            ax.plot([e * scale for e in eps], [100 * a for a in acc], marker="o", label=f"{name} (attack)")
        cert = result.get("lipsim_certified")
        if cert:
            curve = cert["curve"][norm]
            ax.plot([e * scale for e in curve["eps"]], [100 * a for a in curve["accuracy"]], "k--",
                    label="lipsim (certified)")
        ax.set_xlabel("l2 budget ([0,1] pixel units)" if norm == "l2" else "linf budget (x/255)")
        ax.set_ylabel("2AFC agreement with teachers (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_title(f"{norm} attacks on the reference ({result['n_triplets']} triplets)")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)


def _plot_distance_hist(result: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    entries = [(n, r["distance_attack"]) for n, r in result["metrics"].items() if r.get("distance_attack")]
    if not entries:
        return
    fig = Figure(figsize=(3.2 * len(entries), 3.2), layout="constrained")
    axes = fig.subplots(1, len(entries), squeeze=False)[0]
    for ax, (name, res) in zip(axes, entries, strict=True):
        ax.hist(res["values"], bins=20, color="tab:red", alpha=0.7, label="d(x, x+delta)")
        ax.axvline(res["median_clean_d_ref_x0"], color="k", ls="--", label="median d(ref, x0)")
        ax.set_title(name)
        ax.set_xlabel("distance")
    axes[0].set_ylabel("images")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"distance attack, l2 eps = {result['config']['distance_eps']:g}")
    fig.savefig(path, dpi=120)


def _markdown(result: Mapping[str, Any]) -> str:
    cols = [("natural", None)] + [("l2", e) for e in result["config"]["l2_eps"]] + \
        [("linf", e) for e in result["config"]["linf_eps"]]
    head = ["natural" if n == "natural" else eps_label(n, e) for n, e in cols]
    lines = [
        f"Triplets: `{result['triplets']}` ({result['n_triplets']} unanimous triplets); attack "
        f"{result['config']['method']}, {result['config']['steps']} steps, {result['config']['restarts']} restart(s); "
        f"{result['machine']}; {result['date']}.",
        f"Command: `{result['command']}`",
        "",
        "| metric | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    for name, res in result["metrics"].items():
        cells = [res["natural"] if n == "natural" else res[n][str(e)] for n, e in cols]
        lines.append(f"| {name} | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")
    cert = result.get("lipsim_certified")
    if cert:
        cells = [cert["natural"] if n == "natural" else cert[n][str(e)] for n, e in cols]
        lines.append("| lipsim (certified) | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")
    if not any(res.get("distance_attack") for res in result["metrics"].values()):
        return "\n".join(lines) + "\n"  # --distance-eps 0: no distance attack
    lines += ["", f"Distance attack, l2 eps = {result['config']['distance_eps']:g}: d(x, x + delta) per metric.", "",
              "| metric | images | median d(x, x+delta) | max | median clean d(ref, x0) |", "|---|---|---|---|---|"]
    for name, res in result["metrics"].items():
        da = res.get("distance_attack")
        if da:
            lines.append(f"| {name} | {len(da['values'])} | {da['median']:.4g} | {da['max']:.4g} | "
                         f"{da['median_clean_d_ref_x0']:.4g} |")
    return "\n".join(lines) + "\n"


def _show(ax: Any, image: Tensor, title: str) -> None:
    ax.imshow(image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy())
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def save_adversarial_figure(path: str | os.PathLike[str], ref: Tensor, x0: Tensor, x1: Tensor, adv_ref: Tensor,
                            baseline_name: str, baseline: DistanceFn, lipsim: LipSim, norm: str = "l2") -> Path:
    """Save a grid (reference, x0, x1, attacked reference, perturbation) with both metrics' judgements.

    Args:
        path: output PNG.
        ref, x0, x1, adv_ref: one triplet, each ``(3, H, W)`` or ``(1, 3, H, W)`` in [0, 1].
        baseline_name: name printed for ``baseline``.
        baseline: the attacked distance (e.g. LPIPS).
        lipsim: the LipSim metric (its judgement and certificate are shown for the clean and attacked reference).
        norm: the attack's norm (printed with the perturbation size).

    Returns:
        The written path.
    """
    from matplotlib.figure import Figure

    ref, x0, x1, adv_ref = (t if t.ndim == 4 else t[None] for t in (ref, x0, x1, adv_ref))
    with torch.no_grad():
        b_clean = (float(baseline(ref, x0)), float(baseline(ref, x1)))
        b_adv = (float(baseline(adv_ref, x0)), float(baseline(adv_ref, x1)))
        l_clean = lipsim.certify_2afc(ref, x0, x1)
        l_adv = lipsim.certify_2afc(adv_ref, x0, x1)

    def choice(d: tuple[float, float]) -> str:
        return "x1" if d[1] < d[0] else "x0"

    delta = (adv_ref - ref)[0]
    size = float(perturbation_norm(adv_ref, ref, norm)[0])
    amp = 0.5 / max(float(delta.abs().max()), 1e-12)
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 5)
    _show(axes[0], ref[0], "reference")
    _show(axes[1], x0[0], "x0")
    _show(axes[2], x1[0], "x1")
    _show(axes[3], adv_ref[0], f"attacked reference\n{norm} norm {size:.3g}")
    _show(axes[4], 0.5 + amp * delta, f"perturbation (x{amp:.0f})")
    lc = (float(l_clean.d0[0]), float(l_clean.d1[0]))
    la = (float(l_adv.d0[0]), float(l_adv.d1[0]))
    fig.suptitle(
        f"{baseline_name}: {choice(b_clean)} closer (d0={b_clean[0]:.3f}, d1={b_clean[1]:.3f}) -> attacked: "
        f"{choice(b_adv)} closer (d0={b_adv[0]:.3f}, d1={b_adv[1]:.3f})\n"
        f"LipSim: {choice(lc)} closer (d0={lc[0]:.3f}, d1={lc[1]:.3f}, certified l2 radius "
        f"{float(l_clean.radius[0]):.3g}) -> attacked: {choice(la)} closer (d0={la[0]:.3f}, d1={la[1]:.3f})",
        fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def _find_and_save_figure(result: Mapping[str, Any], raw: Mapping[str, Any], metrics: Mapping[str, DistanceFn],
                          dataset: Any, indices: Sequence[int], labels: Tensor, config: AttackConfig,
                          device: str | torch.device, out: Path, max_tries: int = 5) -> Path | None:
    """Find a triplet flipped for a baseline at the smallest budget while LipSim is certified there; save it."""
    lipsim = metrics.get("lipsim")
    cert = raw.get("certified")
    if not isinstance(lipsim, LipSim) or cert is None:
        print("note: --figure needs the 'lipsim' metric; no figure written", file=sys.stderr)
        return None
    radius = torch.tensor(cert["radius"], dtype=torch.float64)
    for norm in ("l2", "linf"):
        for eps in sorted(result["config"][f"{norm}_eps"]):
            lipsim_radius = radius / math.sqrt(cert["dim"]) if norm == "linf" else radius
            for name, fn in metrics.items():
                if name == "lipsim":
                    continue
                natural, attacked = raw[name]["natural"]["correct"], raw[name][(norm, eps)]["correct"]
                tries = 0
                for pos in range(len(indices)):
                    if not (natural[pos] and not attacked[pos] and cert["correct"][pos] and lipsim_radius[pos] > eps):
                        continue
                    if tries >= max_tries:
                        break
                    tries += 1
                    item = dataset[indices[pos]]
                    ref, x0, x1 = (item[k][None].to(device) for k in ("ref", "x0", "x1"))
                    label = labels[pos : pos + 1].to(device)
                    adv = attack_2afc(fn, ref, x0, x1, eps, norm, config.method, config.steps, config.restarts,
                                      config.seed, target=label)
                    with torch.no_grad():
                        flipped = int(fn(adv, x1)[0] < fn(adv, x0)[0]) != int(label[0])
                    if flipped:
                        return save_adversarial_figure(out / "adversarial_example.png", ref, x0, x1, adv, name, fn,
                                                       lipsim, norm)
    print("note: no triplet found where an attack flips a baseline while LipSim is certified; no figure written",
          file=sys.stderr)
    return None
