"""The accuracy budget: keep the most harmful layer groups in higher precision until the mIoU
drop against FP32 (in points, on a few validation images) is within ``--max-miou-drop``.

1. Build the fully reduced model; if its drop is within the budget, stop (no analysis needed).
2. Sensitivity: for every layer group, build the model with only that group kept in higher
   precision and measure how many points that recovers.
3. Greedy: try groups in order of points recovered, re-measuring after each and keeping a group
   only if it lowers the drop, until the drop is within the budget (or every group was tried:
   then the result says the budget was missed).

Every candidate shares the calibration ranges (the cache), so a step costs one quantization
pass and one evaluation on the budget images.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from aspp_deploy.precision.accuracy import Comparison, LazyReference, Reference
from aspp_deploy.precision.groups import LayerGroup


class CandidateBuilder(Protocol):
    def build(self, exclude: list[str], out: Path) -> None: ...


@dataclass
class BudgetResult:
    budget_points: float
    images: int
    base_drop: float | None  # points, everything reduced (None: budget loop off)
    final_drop: float | None
    met: bool | None
    kept: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"max_miou_drop_points": self.budget_points, "images": self.images,
                "drop_all_reduced_points": self.base_drop, "drop_points": self.final_drop,
                "met": self.met, "kept_in_higher_precision": self.kept, "sensitivity": self.sensitivity}


def quietly(fn, *args, **kwargs):
    """Run a quantizer call with its stdout chatter (histogram progress) swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def run_budget(builder: CandidateBuilder, reference: Reference | LazyReference | None, groups: list[LayerGroup],
               budget_points: float, work: Path,
               log: Callable[[str], None] = lambda m: None) -> tuple[Path, BudgetResult]:
    """Returns the chosen candidate and what the loop measured and decided."""
    counter = iter(range(10**6))

    def build(exclude: list[str]) -> Path:
        out = work / f"candidate-{next(counter)}.onnx"
        quietly(builder.build, exclude, out)
        return out

    base = build([])
    if reference is None:
        return base, BudgetResult(budget_points, 0, None, None, None)
    first = reference.compare(base)
    base_drop = first.miou_drop_points
    log(f"all reduced: mIoU drop {_points(base_drop)} points on {reference.limit} image(s) "
        f"(budget {budget_points:g})")
    result = BudgetResult(budget_points, reference.limit, base_drop, base_drop, base_drop <= budget_points)
    if result.met:
        return base, result

    total_flops = sum(g.flops for g in groups) or 1
    measured: list[tuple[LayerGroup, Comparison]] = []
    for g in groups:
        cmp = reference.compare(build(g.nodes))
        measured.append((g, cmp))
        result.sensitivity.append({"group": g.name, "nodes": len(g.nodes),
                                   "flops_share": g.flops / total_flops,
                                   "drop_if_kept_points": cmp.miou_drop_points,
                                   "recovered_points": base_drop - cmp.miou_drop_points})
        log(f"sensitivity {g.name}: keeping it recovers {base_drop - cmp.miou_drop_points:+.2f} points")
    # Most helpful first; groups that did not help alone are tried last (interactions: a layer
    # can matter only once the layers after it are kept). A group is kept only if it helps.
    ranked = sorted(measured, key=lambda m: (m[1].miou_drop_points, m[0].flops))
    chosen, exclude = base, []
    drop = base_drop
    for g, alone in ranked:
        candidate = build(exclude + g.nodes)
        new_drop = reference.compare(candidate).miou_drop_points
        if new_drop >= drop:
            log(f"{g.name}: no gain once the others are kept ({drop:.2f} -> {new_drop:.2f}); stays reduced")
            continue
        exclude = exclude + g.nodes
        result.kept.append({"group": g.name, "nodes": g.nodes, "flops_share": g.flops / total_flops,
                            "recovered_alone_points": base_drop - alone.miou_drop_points,
                            "drop_after_points": new_drop, "recovered_points": drop - new_drop})
        log(f"keep {g.name} in higher precision: drop {_points(drop)} -> {_points(new_drop)} points "
            f"({100 * g.flops / total_flops:.1f}% of the FLOPs)")
        chosen, drop = candidate, new_drop
        if drop <= budget_points:
            break
    result.final_drop, result.met = drop, drop <= budget_points
    return chosen, result


def _points(value: float) -> str:
    """``0.05`` / ``-0.05``; never ``-0.00`` for a drop that rounds to zero."""
    text = f"{value:.2f}"
    return "0.00" if float(text) == 0 else text
