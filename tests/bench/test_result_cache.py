"""The result cache behind `compare` (and quantize's accuracy): exact keys, atomic entries, and an
entry that is damaged or belongs to another key is measured again, never trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from aspp_deploy.bench.compare import RowSpec, ValidationSet
from aspp_deploy.bench.result_cache import FORMAT, ResultCache, digest_of
from aspp_deploy.bench.row_keys import row_keys
from aspp_deploy.runtime.preprocess import Preprocess
from tests.conftest import TINY_SIZE

CLASSES = ["background", "a", "b", "c", "d", "e"]


def _keys(tiny_data: Path, tmp_path: Path):
    """A key function over an artifact file and a fake PyTorch source, and the things to vary."""
    art = tmp_path / "m.onnx"
    art.write_bytes(b"onnx bytes")
    source = SimpleNamespace(fingerprint=lambda spec=None: "f" * 64)
    pre = Preprocess(TINY_SIZE, TINY_SIZE)
    return art, source, pre


def test_the_key_changes_when_any_of_its_parts_changes(tiny_data, tmp_path):
    art, source, pre = _keys(tiny_data, tmp_path)
    val = ValidationSet(tiny_data, pre, len(CLASSES), None)
    fp32 = SimpleNamespace(source=source)
    spec = RowSpec("onnxruntime", "fp32", "cpu", art)

    def digest(spec=spec, fp32=fp32, pre=pre, classes=CLASSES, val=val, threads=0) -> str:
        return digest_of(row_keys(fp32, pre, classes, val, threads)(spec))

    base = digest()
    assert base == digest()  # the same inputs: the same key (nothing random, no time in it)
    variants = {"threads": digest(threads=2),
                "preprocess": digest(pre=Preprocess(TINY_SIZE, TINY_SIZE, mean=(0.5, 0.5, 0.5))),
                "classes": digest(classes=CLASSES[:-1] + ["other"]),
                "backend": digest(spec=RowSpec("openvino", "fp32", "cpu", art)),
                "precision": digest(spec=RowSpec("onnxruntime", "fp16", "cpu", art)),
                "device": digest(spec=RowSpec("onnxruntime", "fp32", "cuda", art)),
                "limit": digest(val=ValidationSet(tiny_data, pre, len(CLASSES), 2))}
    other = tmp_path / "other.onnx"
    other.write_bytes(b"other onnx bytes")
    variants["artifact"] = digest(spec=RowSpec("onnxruntime", "fp32", "cpu", other))
    art.write_bytes(b"onnx bytes, changed in place")
    variants["artifact content"] = digest()
    art.write_bytes(b"onnx bytes")
    # the same images with one mask changed by one pixel
    data2 = tmp_path / "data2"
    shutil.copytree(tiny_data, data2)
    mask_path = ValidationSet(data2, pre, len(CLASSES), None).samples[-1].mask
    with Image.open(mask_path) as im:
        mask = np.array(im)
        palette = im.getpalette()
    mask[0, 0] = 1 if mask[0, 0] != 1 else 2
    changed = Image.fromarray(mask, mode="P")
    changed.putpalette(palette)
    changed.save(mask_path)
    variants["data"] = digest(val=ValidationSet(data2, pre, len(CLASSES), None))
    torch_spec = RowSpec("torch", "fp32", "cpu", tmp_path / "model.pt")
    torch_base = digest(spec=torch_spec)
    variants["torch source"] = digest(spec=torch_spec,
                                      fp32=SimpleNamespace(source=SimpleNamespace(fingerprint=lambda spec=None: "g" * 64)))
    assert base == digest()  # restored: the same key again
    for part, d in variants.items():
        assert d != base, f"the key did not change with the {part}"
    assert len({base, torch_base, *variants.values()}) == len(variants) + 2
    # a row that cannot be identified by content is not cached at all
    assert row_keys(SimpleNamespace(source=None), pre, CLASSES, val, 0)(torch_spec) is None
    assert row_keys(fp32, pre, CLASSES, val, 0)(RowSpec("onnxruntime", "fp32", "cpu", tmp_path / "gone.onnx")) is None


def _entry(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    key = {"what": "accuracy", "row": {"artifact": {"sha256": "a" * 64}}, "reference": None}
    arrays = {"pred0": np.arange(12, dtype=np.uint8).reshape(3, 4)}
    assert cache.put(key, {"miou": 0.5, "per_class_iou": {"a": None}}, arrays)
    return cache, key


def test_an_entry_is_reused_for_its_exact_key_only(tmp_path):
    cache, key = _entry(tmp_path)
    hit = cache.get(key)
    assert hit is not None and hit.result["miou"] == 0.5 and cache.why == "reused"
    assert np.array_equal(hit.arrays["pred0"], np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert cache.get(dict(key, reference={"other": 1})) is None and cache.why == "no cached result"
    assert ResultCache(None).get(key) is None
    assert not ResultCache(None).put(key, {"miou": 1.0})
    # nothing half-written is left beside the entries (atomic writes)
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".npz"]


def _record(tmp_path) -> Path:
    return next((tmp_path / "cache").glob("*.json"))


@pytest.mark.parametrize("damage", ["edited figure", "truncated record", "not json", "other key", "other format",
                                    "arrays edited", "arrays truncated", "arrays gone", "pickled arrays"])
def test_a_damaged_or_foreign_entry_is_not_trusted(tmp_path, damage):
    cache, key = _entry(tmp_path)
    record_path = _record(tmp_path)
    arrays_path = record_path.with_suffix(".npz")
    record = json.loads(record_path.read_text())
    if damage == "edited figure":
        record["result"]["miou"] = 0.99  # checksum left as it was
        record_path.write_text(json.dumps(record))
    elif damage == "truncated record":
        record_path.write_text(record_path.read_text()[:40])
    elif damage == "not json":
        record_path.write_bytes(b"\xff\xfe garbage")
    elif damage == "other key":
        record["key"] = dict(key, reference={"x": 1})  # another entry's record under this digest
        record_path.write_text(json.dumps(record))
    elif damage == "other format":
        record["format"] = FORMAT.replace("v1", "v0")
        record_path.write_text(json.dumps(record))
    elif damage == "arrays edited":
        data = bytearray(arrays_path.read_bytes())
        data[-30] ^= 0xFF
        arrays_path.write_bytes(bytes(data))
    elif damage == "arrays truncated":
        arrays_path.write_bytes(arrays_path.read_bytes()[:50])
    elif damage == "arrays gone":
        arrays_path.unlink()
    elif damage == "pickled arrays":  # an object array would need pickle to load: refused even with its checksum
        import hashlib
        import io

        buf = io.BytesIO()
        np.savez(buf, pred0=np.array([{"x": 1}], dtype=object))
        arrays_path.write_bytes(buf.getvalue())
        record["arrays_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
        record_path.write_text(json.dumps(record))
    assert cache.get(key) is None, damage
    assert cache.why.startswith("cached result ") and "reused" not in cache.why
    # measuring again rewrites the entry, which is then reused
    assert cache.put(key, {"miou": 0.5}, {"pred0": np.zeros((2, 2), np.uint8)})
    assert cache.get(key) is not None and cache.get(key).result["miou"] == 0.5


def _compare(checkpoint, data, art, tmp_path, tag, *extra) -> dict:
    from typer.testing import CliRunner

    from aspp_deploy.cli import app

    out = tmp_path / f"{tag}.json"
    r = CliRunner().invoke(app, ["compare", "--checkpoint", str(checkpoint), "--artifacts", str(art),
                                 "--data", str(data), "--limit", "2", "--rounds", "2", "--iters", "2", "--warmup", "0",
                                 "--report", str(tmp_path / f"rep-{tag}"), "--json", str(out), *extra])
    assert r.exit_code == 0, r.output
    return {(x["backend"], x["precision"], x["device"]): x for x in json.loads(out.read_text())["rows"]}


FIGURES = ("miou", "delta_miou", "pixel_agreement", "boundary_f", "max_abs_logit_diff", "per_class_iou")


def test_a_second_compare_reuses_every_row_and_a_tampered_entry_is_measured_again(
        tiny_checkpoint, tiny_data, tmp_path, monkeypatch, compared_artifacts):
    import aspp_deploy.bench.compare as C

    art = compared_artifacts(tmp_path / "art")  # the models made once for the session; no result cache

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again although nothing changed")

    first = _compare(tiny_checkpoint, tiny_data, art, tmp_path, "1", "--reuse-latency")
    ok = [k for k, r in first.items() if r["status"] == "ok"]
    assert len(ok) >= 4 and all(first[k]["reused"] == [] for k in ok)
    onnx_before = {p.name: p.read_bytes() for p in art.glob("*.onnx")}

    assert all([len(r) for r in first[k]["latency"]["rounds_ms"]] == [2, 2] for k in ok)
    # nothing changed: no row is measured again (measuring would fail here), every figure is the same;
    # the speed-ups still pair by round: every latency comes from the same earlier run
    with monkeypatch.context() as m:
        m.setattr(C, "measure_accuracy", no_measuring)
        m.setattr(C, "run_rounds", no_measuring)
        second = _compare(tiny_checkpoint, tiny_data, art, tmp_path, "2", "--reuse-latency")
    for k in ok:
        assert second[k]["status"] == "ok", second[k]
        assert second[k]["reused"] == ["accuracy", "latency"], k
        assert {f: second[k][f] for f in FIGURES} == {f: first[k][f] for f in FIGURES}
        assert second[k]["p50_ms"] == first[k]["p50_ms"]
        assert second[k]["latency"]["rounds_ms"] == first[k]["latency"]["rounds_ms"]
        assert second[k]["speedup_paired"] is True and second[k]["speedup"] == pytest.approx(first[k]["speedup"])
    assert {p.name: p.read_bytes() for p in art.glob("*.onnx")} == onnx_before  # nothing remade

    # one row's latency entry gone: that row is timed now, and the reference with it (a speed-up pairs
    # only within one run); the other rows keep their latency from the first run, not paired with this
    # run's reference, and the report says so
    fp16, ref = ("onnxruntime", "fp16", "cpu"), ok[0]
    for record_path in (art / "result-cache").glob("*.json"):
        record = json.loads(record_path.read_text())
        if record["key"].get("what") == "latency" and record["key"]["row"]["settings"]["precision"] == "fp16":
            record_path.unlink()
    mixed = _compare(tiny_checkpoint, tiny_data, art, tmp_path, "2b", "--reuse-latency")
    assert mixed[fp16]["reused"] == ["accuracy"] and mixed[ref]["reused"] == ["accuracy"]
    assert mixed[fp16]["speedup_paired"] is True and mixed[fp16]["latency"]["run"] == mixed[ref]["latency"]["run"]
    others = [k for k in ok if k not in (fp16, ref)]
    for k in others:
        assert mixed[k]["reused"] == ["accuracy", "latency"] and mixed[k]["speedup_paired"] is False
        assert mixed[k]["speedup"] == pytest.approx(mixed[ref]["p50_ms"] / mixed[k]["p50_ms"])
    summary = (tmp_path / "rep-2b" / "summary.md").read_text()
    assert "Latency reused from an earlier run (--reuse-latency), not timed again: " in summary
    assert "~ speed-up not paired by round" in summary

    # latency is measured every run unless --reuse-latency: accuracy still reused
    third = _compare(tiny_checkpoint, tiny_data, art, tmp_path, "3")
    assert all(third[k]["reused"] == ["accuracy"] for k in ok)

    # a tampered entry (the int8 row's mIoU edited) is measured again, and the true figure comes back
    int8 = ("onnxruntime", "int8 (cpu QDQ)", "cpu")
    for record_path in (art / "result-cache").glob("*.json"):
        record = json.loads(record_path.read_text())
        row = record["key"].get("row") or {}
        if record["key"].get("what") == "accuracy" and row.get("settings", {}).get("precision") == int8[1] \
                and row["settings"]["backend"] == int8[0]:
            record["result"]["miou"] = 0.999
            record_path.write_text(json.dumps(record))
            break
    else:
        raise AssertionError("no cache entry for the int8 row")
    fourth = _compare(tiny_checkpoint, tiny_data, art, tmp_path, "4")
    assert "accuracy" not in fourth[int8]["reused"] and fourth[int8]["miou"] == first[int8]["miou"] != 0.999
    assert all("accuracy" in fourth[k]["reused"] for k in ok if k != int8)
    # ... and stored again, so the next run reuses it
    fifth = _compare(tiny_checkpoint, tiny_data, art, tmp_path, "5")
    assert "accuracy" in fifth[int8]["reused"] and fifth[int8]["miou"] == first[int8]["miou"]

    # --remeasure measures everything again (and gets the same figures)
    sixth = _compare(tiny_checkpoint, tiny_data, art, tmp_path, "6", "--remeasure")
    assert all(sixth[k]["reused"] == [] and sixth[k]["miou"] == first[k]["miou"] for k in ok)


    # a latency measured another way is never reused: its key holds how it was measured (the rounds,
    # their method and seed); a latency stored with other rounds, or by an older compare (one block of
    # calls, no rounds), is measured again
    cache = ResultCache(art / "result-cache")
    entries = [json.loads(p.read_text()) for p in (art / "result-cache").glob("*.json")]
    latency = [e for e in entries if e["key"]["what"] == "latency"]
    assert latency and all({"method", "seed", "rounds", "iters", "warmup"} <= set(e["key"]["bench"]) for e in latency)
    for e in latency:  # as an older compare stored them: no method, seed or rounds; one block of samples
        old_bench = {k: v for k, v in e["key"]["bench"].items() if k not in ("method", "seed", "rounds")}
        assert cache.put(dict(e["key"], bench=old_bench), {"samples_ms": [1.0, 1.0], "batch": 1})
        (art / "result-cache" / f"{e['digest']}.json").unlink()
    seventh = _compare(tiny_checkpoint, tiny_data, art, tmp_path, "7", "--reuse-latency")
    assert all(seventh[k]["reused"] == ["accuracy"] and seventh[k]["p50_ms"] != 1.0 for k in ok)
    eighth = _compare(tiny_checkpoint, tiny_data, art, tmp_path, "8", "--reuse-latency", "--rounds", "3")
    assert all(eighth[k]["reused"] == ["accuracy"] and eighth[k]["latency_rounds"] == 3 for k in ok)
