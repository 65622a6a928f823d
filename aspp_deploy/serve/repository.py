"""A Triton model repository that serves segmentation: images in, class-id masks at the image's size out.

``write_repository(onnx, out, TritonOptions(...))`` writes::

    out/<name>/config.pbtxt          the segmentation service (Python backend, ``triton_model.py``)
    out/<name>/<version>/model.py    with service.json, the torch-free runtime (aspp_deploy/) and,
                                     for the in-process executor, model.onnx
    out/<name>_onnx/ or <name>_trt/  the network as an ``onnxruntime`` / ``tensorrt_plan`` model, when
                                     the service runs it through Triton (``executor="triton"``)
    out/<name>_nobatch/              the same service without dynamic batching (``unbatched_twin``),
                                     to measure what the batcher brings
    out/<name>_raw/                  the same service with one required input, RAW at the network's
                                     input size (``raw_twin``): what a load generator that makes its
                                     own data (perf_analyzer) can drive without an input file
    out/repository.json              what was written, with every file's sha256

The folder is assembled beside ``out`` and renamed into place: never half-written. Writing another
``version`` into a repository this tool wrote adds that version folder and keeps the others (the same
version is replaced), so ``version_policy`` ``all`` or ``latest:2`` serves several. Nothing in it names
an absolute path of the machine it was written on unless asked to: a Python environment given as a
relative path is written relative to the model's folder (``$$TRITON_MODEL_DIRECTORY/...``), so the
repository moves with its environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from aspp_deploy.serve import triton_config as triton
from aspp_deploy.errors import InputError
from aspp_deploy.io import atomic_write_text, is_replaceable, json_text, replace_folder, sha256_file
from aspp_deploy.runtime.portable import copy_runtime

FORMAT = "aspp-deploy/triton-repository"
EXECUTORS = ("onnxruntime", "triton")
TARGETS = ("onnx", "trt")
KINDS = ("cpu", "gpu")
MODEL_FILE = "model.onnx"
SERVICE_SOURCE = Path(__file__).with_name("triton_model.py")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
MODEL_DIR = "$$TRITON_MODEL_DIRECTORY"  # the Python backend puts the model's folder here (repo/<model>)
QUEUE_TIMEOUT_US = 10_000_000  # a request waiting longer than this in the batcher's queue is rejected
# The service's own figures on the metrics port (Prometheus): network runs and the images they carried,
# per model and version, so the batches really run can be seen (images / runs = the mean batch).
METRIC_RUNS, METRIC_IMAGES = "aspp_network_runs", "aspp_network_images"


@dataclass
class TritonOptions:
    """How the repository serves the model (each is a ``config.pbtxt`` setting, none is code)."""

    name: str = "aspp"
    executor: str = "onnxruntime"  # onnxruntime: in the Python model; triton: through <name>_<target>
    target: str = "onnx"           # the network model the "triton" executor calls: onnx or trt
    max_batch: int = 8             # images per request and per batched execution
    dynamic_batching: bool = True
    preferred_batch: List[int] = field(default_factory=list)
    queue_delay_us: int = 2000
    max_queue_size: Optional[int] = None  # requests the batcher may hold (None: 4 x max_batch x instances; 0: no limit)
    queue_timeout_us: int = QUEUE_TIMEOUT_US  # longest wait in the queue before a REJECT (0: no limit)
    instances: int = 1
    kind: str = "cpu"              # where the service (and an ONNX target) runs
    threads: int = 0               # ONNX Runtime intra-op threads per instance of the in-process executor
                                   # (0: the server's cores divided among the instances)
    warmup: bool = True
    version: int = 1
    version_policy: str = "latest:1"  # latest:N | all | specific:1,2
    max_image_pixels: int = 40_000_000
    python_env: Optional[str] = None  # EXECUTION_ENV_PATH: a Python environment folder or conda-pack archive
    unbatched_twin: bool = False
    raw_twin: bool = False

    def check(self) -> None:
        if not NAME_RE.match(self.name):
            raise InputError(f"model name {self.name!r}: use letters, digits, _ or - (at most 63), starting with a "
                             "letter or digit")
        for value, allowed, what in ((self.executor, EXECUTORS, "executor"), (self.target, TARGETS, "target"),
                                     (self.kind, KINDS, "instance kind")):
            if value not in allowed:
                raise InputError(f"{what} {value!r}: choose one of {', '.join(allowed)}")
        if not 1 <= self.max_batch <= 1024:
            raise InputError(f"max batch {self.max_batch}: give 1 to 1024")
        bad = [b for b in self.preferred_batch if not 1 <= b <= self.max_batch]
        if bad:
            raise InputError(f"preferred batch sizes {bad} are outside 1..{self.max_batch} (the max batch)")
        if not 0 <= self.queue_delay_us <= 10_000_000:
            raise InputError(f"queue delay {self.queue_delay_us} us: give 0 to 10000000")
        if self.max_queue_size is not None and not 0 <= self.max_queue_size <= 1_000_000:
            raise InputError(f"max queue size {self.max_queue_size}: give 0 (no limit) to 1000000")
        if not 0 <= self.queue_timeout_us <= 3_600_000_000:
            raise InputError(f"queue timeout {self.queue_timeout_us} us: give 0 (no limit) to 3600000000")
        if not 1 <= self.instances <= 64:
            raise InputError(f"instances {self.instances}: give 1 to 64")
        if not 0 <= self.threads <= 1024:
            raise InputError(f"threads {self.threads}: give 0 (ONNX Runtime's choice) to 1024")
        if not 1 <= self.version <= 2**31 - 1:
            raise InputError(f"version {self.version}: Triton versions are positive integers")
        if self.max_image_pixels < 1:
            raise InputError(f"max image pixels {self.max_image_pixels}: give a positive number")
        version_policy(self.version_policy)


def version_policy(policy: str) -> Dict[str, Any]:
    """``latest:N``, ``all`` or ``specific:1,2`` -> Triton's ``version_policy`` message (as
    ``triton.model_config_text`` takes it)."""
    kind, _, arg = policy.partition(":")
    try:
        if kind == "all" and not arg:
            return {"all": {}}
        if kind == "latest":
            count = int(arg or "1")
            if count >= 1:
                return {"latest": {"num_versions": count}}
        if kind == "specific":
            versions = [int(v) for v in arg.split(",")]
            if versions and min(versions) >= 1:
                return {"specific": {"versions": versions}}
    except ValueError:
        pass
    raise InputError(f"version policy {policy!r}: give latest:N, all or specific:1,2")


def version_policy_pbtxt(policy: str) -> str:
    """``version_policy(policy)`` on one line of text format (for messages and tests)."""
    def inline(message: Dict[str, Any]) -> str:
        parts = [f"{k} {inline(v)}" if isinstance(v, dict) else
                 f"{k}: [ {', '.join(map(str, v))} ]" if isinstance(v, list) else f"{k}: {v}"
                 for k, v in message.items()]
        return "{ " + " ".join(parts) + (" }" if parts else "}")
    return f"version_policy: {inline(version_policy(policy))}"


def _mask_type(entry: Dict[str, Any]) -> str:
    classes = len(entry.get("classes") or [])
    return "TYPE_UINT8" if 0 < classes <= 256 else "TYPE_INT32"


def queue_size(opts: TritonOptions) -> int:
    """The batcher's queue bound: ``max_queue_size``, by default four full batches per instance."""
    return 4 * opts.max_batch * opts.instances if opts.max_queue_size is None else opts.max_queue_size


def service_kind(opts: TritonOptions) -> str:
    """Where the service's instances run: the in-process executor runs ONNX Runtime on the CPU (its
    CPU execution provider), so its instances are CPU ones whatever ``kind`` says."""
    return "cpu" if opts.executor == "onnxruntime" else opts.kind


def notes(opts: TritonOptions, entry: Dict[str, Any]) -> List[str]:
    """What the options will not do as asked, one line each (``aspp-deploy triton`` prints them)."""
    found = []
    if opts.kind == "gpu" and opts.executor == "onnxruntime":
        found.append("--kind gpu: the in-process executor runs ONNX Runtime on the CPU, so the service's instances "
                     "are KIND_CPU (--executor triton runs the network on Triton's own GPU backends)")
    if opts.dynamic_batching and _model_batch(entry) == 1 and opts.max_batch > 1:
        found.append("the ONNX has a static batch of 1: the dynamic batcher would gather requests that the network "
                     "then runs one at a time, after the queue delay; export with a dynamic batch (aspp-deploy "
                     "export --dynamic batch) or pass --no-dynamic-batching")
    return found


def env_path(python_env: Optional[str], model_dir: Path) -> Optional[str]:
    """``EXECUTION_ENV_PATH`` for ``python_env``: an absolute path, a ``$$TRITON_MODEL_DIRECTORY`` form or
    a URL as given; a relative path (from the current folder) as a path from the model's folder
    ``model_dir``, ``$$TRITON_MODEL_DIRECTORY/../../env``, so the repository and the environment move
    together."""
    if not python_env:
        return None
    if "$$" in python_env or "://" in python_env:
        return python_env
    path = Path(python_env).expanduser()
    if path.is_absolute():
        return str(path)
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(model_dir))  # links kept: they may move too
    return f"{MODEL_DIR}/{Path(relative).as_posix()}"


def service_config(name: str, entry: Dict[str, Any], opts: TritonOptions, batching: bool,
                   model_dir: Optional[Path] = None, raw_only: bool = False) -> str:
    """``config.pbtxt`` of the segmentation service model (``model_dir``: where the model's folder will
    be, for a relative ``python_env``; ``raw_only``: one required input, RAW at the network's size)."""
    params = {"EXECUTOR": opts.executor, "MAX_IMAGE_PIXELS": str(opts.max_image_pixels),
              "THREADS": str(opts.threads)}
    if opts.executor == "triton":
        params["TARGET_MODEL"] = f"{opts.name}_{opts.target}"
    env = env_path(opts.python_env, model_dir if model_dir is not None else Path.cwd() / name)
    if env:
        params["EXECUTION_ENV_PATH"] = env
    pre = entry["preprocess"]
    size = [int(pre["height"]), int(pre["width"]), 3]
    inputs = ([{"name": "RAW", "data_type": triton.Enum("TYPE_UINT8"), "dims": size}] if raw_only else
              [{"name": "IMAGE", "data_type": triton.Enum("TYPE_STRING"), "dims": [1], "optional": True},
               {"name": "RAW", "data_type": triton.Enum("TYPE_UINT8"), "dims": [-1, -1, 3], "optional": True}])
    config: Dict[str, Any] = {
        "name": name, "backend": "python", "max_batch_size": opts.max_batch, "input": inputs,
        "output": [{"name": "MASK", "data_type": triton.Enum(_mask_type(entry)), "dims": [-1, -1]}],
        "instance_group": triton.instance_group(service_kind(opts), opts.instances),
        "version_policy": version_policy(opts.version_policy),
    }
    if batching:
        # A bounded queue, and a bounded wait in it: overload is refused (REJECT, UNAVAILABLE to the client)
        # instead of growing the queue and every latency without limit. A client may ask for a shorter wait.
        config["dynamic_batching"] = {"preferred_batch_size": list(opts.preferred_batch),
                                      "max_queue_delay_microseconds": opts.queue_delay_us,
                                      "default_queue_policy": {"timeout_action": triton.Enum("REJECT"),
                                                               "default_timeout_microseconds": opts.queue_timeout_us,
                                                               "allow_timeout_override": True,
                                                               "max_queue_size": queue_size(opts)}}
    # A random image at the model's input size through the whole service; with the triton executor the
    # network model warms up instead (Triton loads models in no set order: the service's warm-up could
    # run before the network model is ready).
    if opts.warmup and opts.executor == "onnxruntime":
        config["model_warmup"] = [{"name": "random_image", "batch_size": 1, "inputs": [{"key": "RAW", "value": {
            "data_type": triton.Enum("TYPE_UINT8"), "dims": size, "random_data": True}}]}]
    config["parameters"] = triton.string_parameters(params)
    return triton.model_config_text(
        config, "Generated by `aspp-deploy triton` from the model manifest: the segmentation service.")


def _model_batch(entry: Dict[str, Any]) -> Optional[int]:
    first = (entry["inputs"][0].get("shape") or [1])[0]
    return int(first) if isinstance(first, int) and first > 0 else None


def write_service(root: Path, name: str, onnx: Optional[Path], entry: Dict[str, Any], opts: TritonOptions,
                  batching: bool = True, model_dir: Optional[Path] = None, raw_only: bool = False) -> None:
    """The service model ``root/name`` (``onnx`` is copied in for the in-process executor; ``model_dir``:
    where ``root/name`` will finally be, for a relative ``python_env``)."""

    version = root / name / str(opts.version)
    version.mkdir(parents=True)
    atomic_write_text(root / name / "config.pbtxt", service_config(name, entry, opts, batching, model_dir, raw_only))
    shutil.copyfile(SERVICE_SOURCE, version / "model.py")
    copy_runtime(version)
    service = {"manifest": entry, "input": entry["inputs"][0]["name"], "output": entry["outputs"][0]["name"],
               "model_batch": _model_batch(entry), "version": opts.version,
               "metrics": {"runs": METRIC_RUNS, "images": METRIC_IMAGES}}
    if opts.executor == "triton":
        service["target_version"] = opts.version  # the network model of the same version
    if opts.executor == "onnxruntime":
        if onnx is None:
            raise InputError("the in-process executor needs the ONNX file")
        copy_model(onnx, version / MODEL_FILE, entry)
        service["onnx"] = MODEL_FILE
    atomic_write_text(version / "service.json", json_text(service, sort_keys=True))


def copy_model(onnx: Path, dest: Path, entry: Dict[str, Any]) -> None:
    """Copy ``onnx`` to ``dest`` with its external data files, if any (each to the same relative place
    beside ``dest``), and check the copies against the sha256 the manifest ``entry`` recorded."""
    from aspp_deploy.export.graph import external_data_files, load_onnx
    from aspp_deploy.export.manifest import EXTERNAL_KEY

    shutil.copyfile(onnx, dest)
    if entry.get("onnx_sha256") and sha256_file(dest) != entry["onnx_sha256"]:
        raise InputError(f"{onnx} changed while it was copied: write the repository again")
    recorded = entry.get(EXTERNAL_KEY) or {}
    for location, file in sorted(external_data_files(load_onnx(onnx, external_data=False), onnx).items()):
        copy = dest.parent / location
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, copy)
        if sha256_file(copy) != recorded.get(location):
            raise InputError(f"{file} (external data of {onnx.name}) does not match its manifest (sha256 differs)")


def _signature(entry: Dict[str, Any], opts: TritonOptions) -> Dict[str, Any]:
    """What every version of one repository must share, since they share one ``config.pbtxt`` each:
    the executor and its network model, the mask type, and (for a network model) the tensors."""
    sig: Dict[str, Any] = {"executor": opts.executor, "mask_type": _mask_type(entry)}
    if opts.executor == "triton":
        sig["target"] = opts.target
        sig["tensors"] = [[t["name"], t["dtype"], t.get("shape")] for t in entry["inputs"] + entry["outputs"]]
    return sig


def _version_dirs(folder: Path) -> List[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()) if folder.is_dir() else []


def kept_versions(out: Path, models: List[str], entry: Dict[str, Any], opts: TritonOptions) -> Tuple[List[Tuple[str, int]], Dict[str, Any]]:
    """The ``(model, version)`` folders of the repository at ``out`` that writing ``opts.version`` keeps
    (every other version of the same models), and their records; refuses versions the new config cannot
    serve (another executor, mask type or network signature)."""
    try:
        previous = json.loads((out / "repository.json").read_text())
    except (OSError, ValueError):
        return [], {}
    records: Dict[str, Any] = dict(previous.get("versions") or {})
    keep = [(m, v) for m in models for v in _version_dirs(out / m) if v != opts.version]
    if not keep:
        return [], {}
    want = _signature(entry, opts)
    kept_records = {}
    for version in sorted({v for _, v in keep}):
        record = records.get(str(version)) or {}
        had = record.get("signature") or {"executor": (previous.get("options") or {}).get("executor")}
        differs = sorted(k for k in set(want) | set(had) if k in had and had.get(k) != want.get(k))
        if differs:
            raise InputError(f"{out} holds version {version} of {opts.name}, which differs from version {opts.version} "
                             f"in {', '.join(differs)} (one config.pbtxt serves every version): write to another "
                             "folder, or remove the other versions first")
        kept_records[str(version)] = record
    return keep, kept_records


def _assemble(root: Path, out: Path, onnx: Path, entry: Dict[str, Any], opts: TritonOptions,
              plan: Optional[Path]) -> dict:
    models = [opts.name]
    write_service(root, opts.name, onnx, entry, opts, opts.dynamic_batching, out / opts.name)
    if opts.unbatched_twin:
        models.append(f"{opts.name}_nobatch")
        write_service(root, models[-1], onnx, entry, opts, False, out / models[-1])
    if opts.raw_twin:
        models.append(f"{opts.name}_raw")
        write_service(root, models[-1], onnx, entry, opts, opts.dynamic_batching, out / models[-1], raw_only=True)
    info: Dict[str, Any] = {"format": FORMAT, "schema": 1, "options": asdict(opts), "models": models,
                            "source_onnx": onnx.name, "source_sha256": entry["onnx_sha256"]}
    notes_found = notes(opts, entry)
    if notes_found:
        info["notes"] = notes_found
    if opts.executor == "triton":
        target = f"{opts.name}_{opts.target}"
        models.append(target)
        (root / target / str(opts.version)).mkdir(parents=True)
        dynamic = _model_batch(entry) is None
        policy = version_policy(opts.version_policy)
        if opts.target == "onnx":
            copy_model(onnx, root / target / str(opts.version) / triton.ONNX_FILE, entry)
            text = triton.config_pbtxt(target, entry, "onnxruntime", dynamic, opts.kind, 1, opts.warmup, policy)
        else:
            text = triton.config_pbtxt(target, entry, "tensorrt", dynamic, warmup=opts.warmup, version_policy=policy)
            plan_to = f"{target}/{opts.version}/{triton.PLAN_FILE}"
            if plan is not None:
                shutil.copyfile(plan, root / plan_to)
            else:
                info["plan_missing"] = (f"build the engine on the serving GPU with the server's TensorRT and place it "
                                        f"at {plan_to}")
        atomic_write_text(root / target / "config.pbtxt", text)
    # Versions written before (of these models) stay beside the new one: adding a version never drops one.
    keep, records = kept_versions(out, models, entry, opts)
    for model, version in keep:
        shutil.copytree(out / model / str(version), root / model / str(version), symlinks=True)
    records[str(opts.version)] = {"source_onnx": onnx.name, "source_sha256": entry["onnx_sha256"],
                                  "signature": _signature(entry, opts)}
    info["versions"] = {k: records[k] for k in sorted(records, key=int)}
    info["files"] = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    atomic_write_text(root / "repository.json", json_text(info, sort_keys=True))
    return info


def is_repository(out: Path) -> bool:
    """True when ``out`` may be replaced: missing, empty, or a repository this tool wrote."""

    return is_replaceable(out, "repository.json", FORMAT)


def write_repository(onnx: Path, out: Path, opts: TritonOptions, plan: Optional[Path] = None) -> dict:
    """Write the repository ``out`` for ``onnx`` (an aspp-deploy ONNX); returns ``repository.json``'s content."""
    from aspp_deploy.export.manifest import read_onnx_manifest

    opts.check()
    if not onnx.is_file():
        raise InputError(f"ONNX model not found: {onnx}")
    if plan is not None and (opts.executor != "triton" or opts.target != "trt"):
        raise InputError("--plan goes with --executor triton --target trt")
    if plan is not None and not plan.is_file():
        raise InputError(f"TensorRT plan not found: {plan}")
    if not is_repository(out):
        raise InputError(f"{out} exists and is not a repository written by aspp-deploy: choose another folder "
                         "(it is never overwritten)")
    entry = dict(read_onnx_manifest(onnx).entry)
    for key in ("preprocess", "inputs", "outputs"):
        if not entry.get(key):
            raise InputError(f"{onnx}'s manifest has no {key}: export it again with `aspp-deploy export`")
    if len(entry["inputs"]) != 1:
        raise InputError(f"{onnx} has {len(entry['inputs'])} inputs: the segmentation service feeds one image input")
    if opts.executor == "triton":
        triton.config_pbtxt("check", entry, "onnxruntime", _model_batch(entry) is None)  # static shapes or refused
    entry["onnx_sha256"] = sha256_file(onnx)
    return replace_folder(out, lambda root: _assemble(root, out, onnx, entry, opts, plan))
