"""The model spec: how a segmentation model is fed and what it returns.

Every command after ``export``/``import`` reads only this (recorded in the artifact's manifest as
``preprocess``, ``classes``, ``palette``, ``output_kind`` and ``spec``), never a checkpoint format.
A user writes it as a small YAML or JSON file (``--spec model.yaml``) or gives it as flags; flags win
over the file. Everything may be left out: what the graph shows (input size, layout, class count,
output kind) is read from it, the rest takes a documented default, and ``resolve`` lists every
default it assumed so the command can say so. See docs/model-spec.md.

Example (every key optional)::

    input:
      height: 512            # the reference size (the static size, or the size measured at when dynamic)
      width: 512
      dynamic: [batch]       # batch and/or spatial
      layout: NCHW           # or NHWC
      channel_order: RGB     # or BGR
      scale: 0.00392156862745098   # pixel * scale, then (x - mean) / std
      mean: [0.485, 0.456, 0.406]  # in the model's channel order
      std: [0.229, 0.224, 0.225]
      resize: stretch        # stretch | letterbox | center_crop
      interpolation: bilinear
      pad_value: [0, 0, 0]   # letterbox fill, pixel values
    classes: [background, road, car]   # or num_classes: 3
    palette: [[0, 0, 0], [128, 64, 128], [0, 0, 142]]
    output: logits           # logits | probabilities | class_ids
    output_layout: NCHW      # NCHW | NHWC: where the class axis of a score map is (read from the graph
                             # when its shape allows one reading only)
    threshold: 0.5           # one-channel (binary) models: foreground where the probability > threshold

A one-channel score map (a sigmoid probability or its logit) is a binary model: background and
foreground. Import and export turn it into a two-channel map inside the graph whose argmax is
``probability > threshold``, so every later command reads it like any other two-class model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aspp_deploy.runtime.preprocess import (CHANNEL_ORDERS, IMAGENET_MEAN, IMAGENET_STD, LAYOUTS, POLICIES,
                                         RESIZE_FILTERS, Preprocess)
from aspp_deploy.data.voc import voc_palette
from aspp_deploy.errors import InputError

OUTPUT_KINDS = ("logits", "probabilities", "class_ids")
DYNAMIC_AXES = ("batch", "spatial")
DEFAULT_SIZE = 512
INPUT_KEYS = ("height", "width", "dynamic", "layout", "channel_order", "scale", "mean", "std", "resize",
              "interpolation", "pad_value")
TOP_KEYS = ("input", "classes", "num_classes", "palette", "output", "output_layout", "threshold")
BINARY_CLASSES = ["background", "foreground"]


@dataclass
class ModelSpec:
    """What the user said about the model; ``None`` = not said (inferred or defaulted)."""

    height: int | None = None
    width: int | None = None
    dynamic: list[str] | None = None
    layout: str | None = None
    channel_order: str | None = None
    scale: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    resize: str | None = None
    interpolation: str | None = None
    pad_value: list[float] | None = None
    classes: list[str] | None = None
    num_classes: int | None = None
    palette: list[list[int]] | None = None
    output: str | None = None
    output_layout: str | None = None
    threshold: float | None = None

    def merged(self, **overrides: Any) -> "ModelSpec":
        """This spec with the given (not None) values replacing its own: flags over the file."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InputError(f"unknown model spec keys: {', '.join(sorted(unknown))}")
        spec = dataclasses.replace(self, **given)
        spec.validate()
        return spec

    def given(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise InputError(f"model spec: {msg}")

        for key in ("height", "width"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 16384):
                bad(f"{key} must be a whole number of pixels in 1..16384, got {v!r}")
        if self.dynamic is not None:
            extra = set(self.dynamic) - set(DYNAMIC_AXES)
            if extra:
                bad(f"dynamic takes {' and/or '.join(DYNAMIC_AXES)}, not {', '.join(sorted(map(str, extra)))}")
        for key, allowed in (("layout", LAYOUTS), ("channel_order", CHANNEL_ORDERS), ("resize", POLICIES),
                             ("interpolation", tuple(RESIZE_FILTERS)), ("output", OUTPUT_KINDS),
                             ("output_layout", LAYOUTS)):
            v = getattr(self, key)
            if v is not None and v not in allowed:
                bad(f"{key} {v!r} is not one of {', '.join(allowed)}")
        if self.threshold is not None and (isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float))
                                           or not 0 < float(self.threshold) < 1):
            bad(f"threshold must be a probability strictly between 0 and 1, got {self.threshold!r}")
        if self.classes is not None and (not self.classes or not all(isinstance(c, str) and c for c in self.classes)):
            bad("classes must be a non-empty list of names")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            bad("class names must be unique")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or not 1 <= self.num_classes <= 65535):
            bad(f"num_classes must be a whole number in 1..65535, got {self.num_classes!r}")
        if self.classes is not None and self.num_classes is not None and len(self.classes) != self.num_classes:
            bad(f"{len(self.classes)} class names for num_classes {self.num_classes}")
        if self.palette is not None:
            try:
                ok = all(len(c) == 3 and all(0 <= int(v) <= 255 and int(v) == v for v in c) for c in self.palette)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                bad("palette must be a list of [r, g, b] colours, each 0..255")
        try:
            self._preprocess(DEFAULT_SIZE, DEFAULT_SIZE, None)
        except ValueError as exc:
            bad(str(exc))

    def _preprocess(self, height: int, width: int, base: Preprocess | None) -> Preprocess:
        base = base or Preprocess(height, width)
        pick = {"layout": self.layout, "channel_order": self.channel_order, "scale": self.scale,
                "mean": tuple(float(v) for v in self.mean) if self.mean is not None else None,
                "std": tuple(float(v) for v in self.std) if self.std is not None else None,
                "policy": self.resize, "resize": self.interpolation,
                "pad_value": tuple(int(round(float(v))) for v in self.pad_value) if self.pad_value is not None else None}
        return dataclasses.replace(base, height=height, width=width, **{k: v for k, v in pick.items() if v is not None})


def load_spec(path: Path | None) -> ModelSpec:
    """A spec file (YAML or JSON) -> ModelSpec; one clear error for anything malformed."""
    if path is None:
        return ModelSpec()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"spec file not found: {path}")
    text = path.read_text(errors="replace")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as exc:  # json/yaml parse errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot parse spec {path}: {first}") from None
    return spec_from_dict(raw, str(path))


def spec_from_dict(raw: Any, where: str = "spec") -> ModelSpec:
    if raw is None:
        return ModelSpec()
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a mapping of keys (input, classes, palette, output), not a "
                         f"{type(raw).__name__}")
    flat = dict(raw)
    section = flat.pop("input", None) or {}
    if not isinstance(section, dict):
        raise InputError(f"{where}: 'input' must be a mapping")
    unknown = (set(flat) - set(TOP_KEYS) - set(INPUT_KEYS)) | (set(section) - set(INPUT_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))} (known: "
                         f"input.{{{', '.join(INPUT_KEYS)}}}, {', '.join(k for k in TOP_KEYS if k != 'input')})")
    values = {**flat, **section}
    if "dynamic" in values and isinstance(values["dynamic"], str):
        values["dynamic"] = [d.strip() for d in values["dynamic"].split(",") if d.strip()]
    for key in ("mean", "std", "pad_value", "classes", "palette", "dynamic"):
        if key in values and values[key] is not None and not isinstance(values[key], list):
            raise InputError(f"{where}: {key} must be a list")
    if "scale" in values and values["scale"] is not None:
        try:
            values["scale"] = float(values["scale"])
        except (TypeError, ValueError):
            raise InputError(f"{where}: scale must be a number, got {values['scale']!r}") from None
    try:
        spec = ModelSpec(**values)
    except TypeError as exc:
        raise InputError(f"{where}: {exc}") from None
    spec.validate()
    return spec


@dataclass
class GraphFacts:
    """What a model itself shows (from the ONNX graph or a PyTorch probe); None = not known."""

    height: int | None = None
    width: int | None = None
    layout: str | None = None
    num_classes: int | None = None
    output_kind: str | None = None
    dynamic: list[str] = field(default_factory=list)
    output_layout: str | None = None
    binary: bool = False  # one score channel, made two (background, foreground) in the graph


@dataclass
class ResolvedSpec:
    preprocess: Preprocess
    classes: list[str]
    palette: list[list[int]]
    output_kind: str
    dynamic: list[str]
    assumed: list[str]
    output_layout: str = "NCHW"  # the original model's; the adopted graph always returns NCHW
    threshold: float | None = None  # binary models only

    def to_dict(self) -> dict:
        pre = self.preprocess
        return {"input": {"height": pre.height, "width": pre.width, "dynamic": list(self.dynamic),
                          "layout": pre.layout, "channel_order": pre.channel_order, "scale": pre.scale,
                          "mean": list(pre.mean), "std": list(pre.std), "resize": pre.policy,
                          "interpolation": pre.resize, "pad_value": list(pre.pad_value)},
                "classes": list(self.classes), "palette": [list(c) for c in self.palette],
                "output": self.output_kind, "output_layout": self.output_layout, "threshold": self.threshold}


def _contradict(what: str, said: Any, shows: Any) -> None:
    raise InputError(f"the spec contradicts the model: {what} {said} given, the model has {shows}")


def resolve_input(spec: ModelSpec, facts: GraphFacts, defaults: Preprocess | None = None) -> tuple[Preprocess, list[str]]:
    """The input half of ``resolve``: size, layout and pixel handling, and the defaults it assumed."""
    assumed: list[str] = []
    contradict = _contradict

    # size
    h, w = spec.height, spec.width
    if facts.height is not None and h is not None and h != facts.height and "spatial" not in facts.dynamic:
        contradict("input height", h, f"a static height of {facts.height}")
    if facts.width is not None and w is not None and w != facts.width and "spatial" not in facts.dynamic:
        contradict("input width", w, f"a static width of {facts.width}")
    h = h or facts.height or (defaults.height if defaults else None)
    w = w or facts.width or (defaults.width if defaults else None)
    if h is None or w is None:
        h, w = h or DEFAULT_SIZE, w or DEFAULT_SIZE
        assumed.append(f"input size {h}x{w} (give --height/--width or the spec's input size)")
    # layout
    if spec.layout and facts.layout and spec.layout != facts.layout:
        contradict("layout", spec.layout, f"an {facts.layout} input")
    base = defaults or Preprocess(h, w)
    pre = spec._preprocess(h, w, base)
    if facts.layout and not spec.layout:
        pre = dataclasses.replace(pre, layout=facts.layout)
    if defaults is None:
        said = spec.given()
        if "channel_order" not in said:
            assumed.append("channel order RGB")
        if "mean" not in said and "std" not in said and "scale" not in said:
            assumed.append(f"pixels scaled to [0, 1] and normalised with ImageNet mean {list(IMAGENET_MEAN)} "
                           f"/ std {list(IMAGENET_STD)}")
        elif "mean" not in said or "std" not in said:
            assumed.append("ImageNet " + " and ".join(k for k in ("mean", "std") if k not in said))
        if "resize" not in said:
            assumed.append("resize policy stretch (aspect ratio not kept)")
        if "layout" not in said and not facts.layout:
            assumed.append("layout NCHW")
    return pre, assumed


def resolve(spec: ModelSpec, facts: GraphFacts, defaults: Preprocess | None = None,
            default_classes: list[str] | None = None, default_palette: list[list[int]] | None = None) -> ResolvedSpec:
    """The full spec: what the user said, checked against what the model shows, the rest defaulted.

    ``defaults`` / ``default_classes`` come from a source that records them (our checkpoints); they are
    not "assumed" in the report. Contradictions between the spec and the model are one InputError."""

    pre, assumed = resolve_input(spec, facts, defaults)
    contradict = _contradict
    # dynamic axes
    dynamic = list(spec.dynamic) if spec.dynamic is not None else list(facts.dynamic)
    # classes
    n = facts.num_classes
    said_n = len(spec.classes) if spec.classes is not None else spec.num_classes
    if n is not None and said_n is not None and said_n != n:
        contradict("a class count of", said_n, f"{n} output classes")
    n = n or said_n or (len(default_classes) if default_classes else None)
    if n is None:
        raise InputError("the number of classes is unknown (the model outputs class ids): give classes or "
                         "num_classes in the spec or --classes")
    if spec.classes is not None:
        classes = list(spec.classes)
    elif facts.binary:
        classes = list(BINARY_CLASSES)
        assumed.append("class names background, foreground (one score channel: a binary model)")
    elif default_classes and len(default_classes) == n:
        classes = list(default_classes)
    else:
        classes = [f"class_{i}" for i in range(n)]
        assumed.append(f"class names class_0..class_{n - 1}")
    if spec.palette is not None:
        if len(spec.palette) < n:
            raise InputError(f"model spec: the palette has {len(spec.palette)} colours for {n} classes")
        palette = [list(map(int, c)) for c in spec.palette[:n]]
    elif default_palette and len(default_palette) >= n:
        palette = [list(c) for c in default_palette[:n]]
    else:
        palette = [list(c) for c in voc_palette(n)]
        if spec.classes is not None or defaults is None:
            assumed.append("the Pascal VOC palette")
    # output kind
    kind = facts.output_kind
    if spec.output:
        if kind == "class_ids" and spec.output != "class_ids":
            contradict("output", spec.output, "an integer (class id) output")
        if kind in ("logits", "probabilities") and spec.output == "class_ids":
            contradict("output", spec.output, "a floating-point output")
        kind = spec.output
    if kind is None:
        kind = "logits"
        assumed.append("output kind logits")
    if spec.output_layout and facts.output_layout and spec.output_layout != facts.output_layout:
        contradict("output layout", spec.output_layout, f"an {facts.output_layout} output")
    threshold = None
    if facts.binary:
        threshold = float(spec.threshold) if spec.threshold is not None else 0.5
        if spec.threshold is None:
            assumed.append("threshold 0.5 on the foreground probability (--threshold)")
    elif spec.threshold is not None:
        raise InputError("--threshold is for models with one score channel (binary); this model has "
                         f"{n} classes")
    return ResolvedSpec(pre, classes, palette, kind, dynamic, assumed,
                        facts.output_layout or spec.output_layout or "NCHW", threshold)


def spec_from_flags(spec_file: Path | None, *, height: int = 0, width: int = 0, dynamic: str | None = None,
                    layout: str | None = None, channel_order: str | None = None, scale: float | None = None,
                    mean: str | None = None, std: str | None = None, resize: str | None = None,
                    interpolation: str | None = None, classes: str | None = None,
                    num_classes: int = 0, output: str | None = None, output_layout: str | None = None,
                    threshold: float | None = None) -> ModelSpec:
    """The spec from ``--spec FILE`` with the CLI flags over it (0 / None = not given)."""

    def floats(text: str | None, name: str) -> list[float] | None:
        if text is None:
            return None
        try:
            return [float(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise InputError(f"--{name} takes three comma-separated numbers, got {text!r}") from None

    names = None
    if classes is not None:
        file = Path(classes)
        if file.suffix.lower() in (".txt", ".names"):
            if not file.is_file():
                raise InputError(f"--classes: {file} does not exist (a .txt or .names file lists one class per line)")
            try:
                text = file.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(f"--classes: {file} is not a readable text file ({type(e).__name__})") from None
            names = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            names = [c.strip() for c in classes.split(",") if c.strip()]
    dyn = None if dynamic is None else [d.strip() for d in dynamic.split(",") if d.strip()]
    return load_spec(spec_file).merged(
        height=height or None, width=width or None, dynamic=dyn, layout=layout, channel_order=channel_order,
        scale=scale, mean=floats(mean, "mean"), std=floats(std, "std"), resize=resize,
        interpolation=interpolation, classes=names, num_classes=num_classes or None, output=output,
        output_layout=output_layout, threshold=threshold)


def _spatial_fits(out_hw: tuple[int, int], in_hw: tuple[int, int]) -> bool:
    """Could ``out_hw`` be a segmentation map of an ``in_hw`` input: the same size, or smaller by one
    stride (1..64) on both axes (rounding either way, as strided convolutions do)?"""
    (ho, wo), (hi, wi) = out_hw, in_hw
    if min(ho, wo) < 1 or ho > hi or wo > wi:
        return False
    for s in range(1, 65):
        if hi // s <= ho <= -(-hi // s) + 1 and wi // s <= wo <= -(-wi // s) + 1:
            return True
    return False


def read_output_layout(shape: tuple[int, ...] | list[int], in_hw: tuple[int, int], said: str | None) -> str:
    """Where the class axis of a 4-D score map is: NCHW or NHWC, from its shape when only one reading
    fits the input size, else from the spec (``said``); an ambiguous shape is never guessed."""
    shape = tuple(int(d) for d in shape)
    fits = [layout for layout, (h, w) in (("NCHW", shape[2:4]), ("NHWC", shape[1:3])) if _spatial_fits((h, w), in_hw)]
    if said:
        if said not in fits:
            raise InputError(f"the spec contradicts the model: output layout {said} given, but an output of "
                             f"{list(shape)} for a {in_hw[0]}x{in_hw[1]} input is not a {said} map")
        return said
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise InputError(f"the model outputs {list(shape)} for a {in_hw[0]}x{in_hw[1]} input: neither an NCHW nor "
                         "an NHWC segmentation map")
    raise InputError(f"the model outputs {list(shape)} for a {in_hw[0]}x{in_hw[1]} input: that could be NCHW "
                     f"({shape[1]} classes) or NHWC ({shape[3]} classes); give --output-layout (or output_layout "
                     "in the spec)")
