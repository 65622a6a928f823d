"""The accuracy budget: keep the most harmful layer groups in higher precision until the task
metric lost against FP32 (in points, on a few budget images) is within ``--max-drop``, on average
and, with ``--max-worst-drop``, on the worst image too.

The task metric is the one ``Comparison`` names (``Comparison.metric``): foreground IoU for a
binary (2-class) model, mIoU otherwise. A person segmenter can keep its mIoU (the background
class is large and easy) while losing a quarter of its foreground IoU on one photo: the mean
drop alone hides that, hence the worst-image bound (None from the comparison: not measured, so
unchecked).

1. Build the fully reduced model (or take the one the calibration-method choice already built);
   if it is within the budget, stop (no analysis needed).
2. Sensitivity: for every layer group, build the model with only that group kept in higher
   precision and measure the drop (mean and worst image) that leaves.
3. Greedy: try groups in order of how much of the shortfall they remove alone, re-measuring
   after each and keeping a group only if it lowers the shortfall (the points above the mean
   budget plus the points above the worst-image budget), until both hold (or every group was
   tried: then the result says the budget was missed).

Every candidate shares the calibration ranges (the cache), so a step costs one quantization
pass and one evaluation on the budget images.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from aspp_deploy.errors import AsppDeployError
from aspp_deploy.precision.accuracy import Comparison
from aspp_deploy.precision.groups import LayerGroup

DEFAULT_MAX_WORST_DROP = 7.0  # points of the task metric on the worst budget image (0: unchecked)


class CandidateBuilder(Protocol):
    def build(self, exclude: list[str], out: Path) -> None: ...


class ComparesCandidates(Protocol):
    """What the loop needs of a reference (``Reference``, ``LazyReference``): how many images it
    measures on, and a candidate's comparison with FP32 on them."""
    limit: int

    def compare(self, candidate: Path) -> Comparison: ...


@dataclass(frozen=True)
class Budget:
    """``mean``: points of the task metric that may be lost on average; ``worst``: on the worst
    image (0: unchecked)."""
    mean: float
    worst: float = DEFAULT_MAX_WORST_DROP

    def shortfall(self, cmp: Comparison) -> float:
        """Points above the budget (0: within it): over the mean bound plus over the worst bound."""
        over = max(0.0, cmp.score_drop_points - self.mean)
        worst = cmp.worst_drop_points
        if self.worst > 0 and worst is not None:
            over += max(0.0, worst - self.worst)
        return over

    def holds(self, cmp: Comparison) -> bool:
        return self.shortfall(cmp) <= 0.0

    def describe(self, cmp: Comparison) -> str:
        """``foreground IoU drop 3.10 points (worst image 9.80)``."""
        worst = cmp.worst_drop_points
        text = f"{cmp.metric} drop {_points(cmp.score_drop_points)} points"
        return text + (f" (worst image {_points(worst)})" if worst is not None else "")


@dataclass
class BudgetResult:
    budget_points: float
    images: int
    base_drop: float | None  # points, everything reduced (None: budget loop off)
    final_drop: float | None
    met: bool | None
    kept: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    metric: str | None = None  # the task metric judged ("foreground IoU" or "mIoU")
    worst_budget_points: float = 0.0  # 0: unchecked
    base_worst: float | None = None  # worst-image drop, everything reduced (None: not measured)
    final_worst: float | None = None
    groups_total: int = 0
    granularity: str = "groups"  # "groups", or "layers" when the groups were too few and coarse

    @property
    def everything_kept(self) -> bool:
        """Every group with a convolution or matrix product stays in higher precision: nothing that
        INT8 could speed up is left quantized."""
        return self.groups_total > 0 and len(self.kept) >= self.groups_total

    def to_dict(self) -> dict:
        return {"metric": self.metric, "max_drop_points": self.budget_points,
                "max_miou_drop_points": self.budget_points,  # the older name of the same bound
                "max_worst_drop_points": self.worst_budget_points or None, "images": self.images,
                "drop_all_reduced_points": self.base_drop, "drop_points": self.final_drop,
                "worst_drop_all_reduced_points": self.base_worst, "worst_drop_points": self.final_worst,
                "met": self.met, "granularity": self.granularity, "groups": self.groups_total,
                "everything_kept": self.everything_kept,
                "kept_in_higher_precision": self.kept, "sensitivity": self.sensitivity}


def quietly(fn, *args, **kwargs):
    """Run a quantizer call with its stdout chatter (histogram progress) swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def run_budget(builder: CandidateBuilder, reference: ComparesCandidates | None, groups: list[LayerGroup],
               budget_points: float, work: Path,
               log: Callable[[str], None] = lambda m: None, worst_points: float = DEFAULT_MAX_WORST_DROP,
               first: tuple[Path, Comparison] | None = None,
               granularity: str = "groups") -> tuple[Path, BudgetResult]:
    """Returns the chosen candidate and what the loop measured and decided. ``first``: the fully
    reduced candidate and its comparison when they were measured already (the method choice)."""
    counter = iter(range(10**6))
    budget = Budget(budget_points, worst_points)

    def build(exclude: list[str]) -> Path:
        out = work / f"candidate-{next(counter)}.onnx"
        quietly(builder.build, exclude, out)
        return out

    if first is not None and reference is not None:
        base, cmp0 = first
    else:
        base = build([])
        if reference is None:
            return base, BudgetResult(budget_points, 0, None, None, None, worst_budget_points=worst_points,
                                      groups_total=len(groups), granularity=granularity)
        cmp0 = reference.compare(base)
    base_drop, base_worst = cmp0.score_drop_points, cmp0.worst_drop_points
    worst_text = f", worst image within {worst_points:g}" if worst_points > 0 else ""
    log(f"all reduced: {budget.describe(cmp0)} on {reference.limit} image(s) "
        f"(budget {budget_points:g}{worst_text})")
    result = BudgetResult(budget_points, reference.limit, base_drop, base_drop, budget.holds(cmp0),
                          metric=cmp0.metric, worst_budget_points=worst_points, base_worst=base_worst,
                          final_worst=base_worst, groups_total=len(groups), granularity=granularity)
    if result.met:
        return base, result

    base_short = budget.shortfall(cmp0)
    total_flops = sum(g.flops for g in groups) or 1
    measured: list[tuple[LayerGroup, Comparison]] = []
    for g in groups:
        cmp = reference.compare(build(g.nodes))
        measured.append((g, cmp))
        result.sensitivity.append({"group": g.name, "nodes": len(g.nodes),
                                   "flops_share": g.flops / total_flops,
                                   "drop_if_kept_points": cmp.score_drop_points,
                                   "worst_drop_if_kept_points": cmp.worst_drop_points,
                                   "recovered_points": base_drop - cmp.score_drop_points,
                                   "shortfall_removed_points": base_short - budget.shortfall(cmp)})
        log(f"sensitivity {g.name}: keeping it recovers {base_drop - cmp.score_drop_points:+.2f} points "
            f"of {cmp.metric}" + (f" (worst image {_points(cmp.worst_drop_points)})"
                                  if cmp.worst_drop_points is not None else ""))
    # Most helpful first; groups that did not help alone are tried last (interactions: a layer
    # can matter only once the layers after it are kept). A group is kept only if it helps.
    ranked = sorted(measured, key=lambda m: (budget.shortfall(m[1]), m[1].score_drop_points, m[0].flops))
    chosen, exclude, current = base, [], cmp0
    for rank, (g, alone) in enumerate(ranked, 1):
        candidate = build(exclude + g.nodes)
        cmp = reference.compare(candidate)
        before, after = budget.shortfall(current), budget.shortfall(cmp)
        if after >= before:
            log(f"{g.name}: no gain once the others are kept ({budget.describe(current)} -> "
                f"{budget.describe(cmp)}); stays reduced")
            continue
        exclude = exclude + g.nodes
        why = (f"sensitivity rank {rank} of {len(ranked)}: alone it recovers "
               f"{base_drop - alone.score_drop_points:+.2f} points of {cmp.metric}; with the groups kept before "
               f"it, the shortfall against the budget goes {before:.2f} -> {after:.2f} points")
        result.kept.append({"group": g.name, "nodes": g.nodes, "flops_share": g.flops / total_flops,
                            "recovered_alone_points": base_drop - alone.score_drop_points,
                            "drop_after_points": cmp.score_drop_points,
                            "worst_drop_after_points": cmp.worst_drop_points,
                            "recovered_points": current.score_drop_points - cmp.score_drop_points,
                            "why": why})
        log(f"keep {g.name} in higher precision: {budget.describe(current)} -> {budget.describe(cmp)} "
            f"({100 * g.flops / total_flops:.1f}% of the FLOPs)")
        chosen, current = candidate, cmp
        if after <= 0:
            break
    result.final_drop, result.final_worst = current.score_drop_points, current.worst_drop_points
    result.met = budget.holds(current)
    return chosen, result


@dataclass
class MethodTrial:
    """One calibration method tried with everything quantized (``--method auto``)."""
    label: str  # "minmax", "entropy", "percentile 99.99" ...
    method: str
    percentile: float | None
    drop: float | None = None
    worst: float | None = None
    metric: str | None = None
    shortfall: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "method": self.method, "percentile": self.percentile,
                "metric": self.metric, "drop_points": self.drop, "worst_drop_points": self.worst,
                "shortfall_points": self.shortfall, "error": self.error}


def best_trial(trials: list[MethodTrial]) -> MethodTrial | None:
    """The trial with the least shortfall against the budget, then the least mean drop, then the
    least worst-image drop; on a tie the one listed first (the cheaper method). None: all failed."""
    ok = [t for t in trials if t.error is None and t.drop is not None]
    if not ok:
        return None
    return min(ok, key=lambda t: (round(t.shortfall or 0.0, 6), round(t.drop or 0.0, 6),
                                  round(t.worst if t.worst is not None else 0.0, 6), trials.index(t)))


def choose_method(trials: list[MethodTrial], build_all: Callable[[MethodTrial], Path],
                  reference: ComparesCandidates, budget: Budget,
                  log: Callable[[str], None] = lambda m: None) -> tuple[MethodTrial, Path, Comparison, str]:
    """Build the fully quantized model with every method in ``trials`` (``build_all``), measure each by
    the task metric on the budget images, and return the best: (trial, its candidate, its comparison,
    why it was chosen). A method whose quantization fails is recorded with its error and skipped."""

    results: dict[str, tuple[Path, Comparison]] = {}
    for t in trials:
        try:
            path = build_all(t)
        except (AsppDeployError, RuntimeError, ValueError) as exc:  # one method failing is not fatal
            t.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log(f"method {t.label}: failed ({t.error})")
            continue
        cmp = reference.compare(path)
        t.drop, t.worst, t.metric, t.shortfall = (cmp.score_drop_points, cmp.worst_drop_points, cmp.metric,
                                                  budget.shortfall(cmp))
        results[t.label] = (path, cmp)
        log(f"method {t.label}: everything quantized, {budget.describe(cmp)} on {reference.limit} image(s)")
    best = best_trial(trials)
    if best is None:
        raise AsppDeployError("every calibration method failed: " + "; ".join(f"{t.label}: {t.error}" for t in trials))
    path, cmp = results[best.label]
    others = [t for t in trials if t is not best and t.drop is not None]
    why = (f"least {cmp.metric} lost with everything quantized: {_points(best.drop or 0.0)} points"
           + (f", worst image {_points(best.worst)}" if best.worst is not None else "")
           + (" (against " + ", ".join(f"{t.label} {_points(t.drop or 0.0)}" for t in others) + ")" if others else ""))
    if best.shortfall:
        why += f"; {best.shortfall:.2f} points over the budget before any layer is kept"
    log(f"method {best.label} chosen: {why}")
    return best, path, cmp, why


def _points(value: float | None) -> str:
    """``0.05`` / ``-0.05``; never ``-0.00`` for a drop that rounds to zero."""
    if value is None:
        return "n/a"
    text = f"{value:.2f}"
    return "0.00" if float(text) == 0 else text
