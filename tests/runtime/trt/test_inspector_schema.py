"""summarize_layers reads both engine-inspector schemas: the combined ``Format/Datatype`` string of
TensorRT 8.x-10.x and the separate ``DataType`` / ``Format`` keys of TensorRT 11 (where
``Bindings`` also became ``I/O Tensors``). Pure JSON: no TensorRT needed."""

import json

from aspp_deploy.runtime.trt.build import summarize_layers


def _layer(name, kind, ins, outs):
    return {"Name": name, "LayerType": kind, "Inputs": ins, "Outputs": outs}


TRT10 = json.dumps({"Layers": [
    _layer("conv", "CaskConvolution",
           [{"Name": "input", "Dimensions": [1, 3, 8, 8], "Format/Datatype": "Row major linear FP32 format (kLINEAR)"}],
           [{"Name": "c", "Dimensions": [1, 8, 8, 8], "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]),
    _layer("qconv", "CaskConvolution",
           [{"Name": "c", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
           [{"Name": "q", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]),
    _layer("to_u8", "Cast", [{"Name": "q", "Format/Datatype": "Row major linear FP32 format (kLINEAR)"}],
           [{"Name": "mask", "Format/Datatype": "Row major linear UInt8 format (kLINEAR)"}]),
], "Bindings": ["input", "mask"]})

# The same engine as TensorRT 11 reports it: type and layout in separate keys.
TRT11 = json.dumps({"Layers": [
    _layer("conv", "CaskConvolution",
           [{"Name": "input", "Dimensions": [1, 3, 8, 8], "DataType": "Float",
             "Format": "Row major linear FP32 format (kLINEAR)"}],
           [{"Name": "c", "Dimensions": [1, 8, 8, 8], "DataType": "Half",
             "Format": "Channel major FP16 format where channel % 8 == 0"}]),
    _layer("qconv", "CaskConvolution",
           [{"Name": "c", "DataType": "Int8", "Format": "Thirty-two wide channel vectorized row major format"}],
           [{"Name": "q", "DataType": "Int8", "Format": "Thirty-two wide channel vectorized row major format"}]),
    _layer("to_u8", "Cast", [{"Name": "q", "DataType": "Float", "Format": "Row major linear format"}],
           [{"Name": "mask", "DataType": "UInt8", "Format": "Row major linear format"}]),
], "I/O Tensors": [{"Name": "input", "IOMode": "Input", "DataType": "Float", "Dimensions": [1, 3, 8, 8]},
                   {"Name": "mask", "IOMode": "Output", "DataType": "UInt8", "Dimensions": [1, 8, 8]}]})

EXPECTED = [("conv", "FP32", "FP16"), ("qconv", "INT8", "INT8"), ("to_u8", "FP32", "UINT8")]


def test_trt10_combined_key():
    s = summarize_layers(TRT10)
    assert [(r["name"], r["in"], r["out"]) for r in s["layers"]] == EXPECTED
    assert s["precisions"] == {"FP16": 1, "INT8": 1, "UINT8": 1}


def test_trt11_split_keys():
    s = summarize_layers(TRT11)
    assert [(r["name"], r["in"], r["out"]) for r in s["layers"]] == EXPECTED
    assert "unknown" not in s["precisions"]


def test_trt11_type_names_in_other_spellings():
    # the type key decides even where the layout text names no type or another one
    layers = [_layer(f"l{i}", "X", [], [{"DataType": dt, "Format": "Row major linear FP32 format"}])
              for i, dt in enumerate(["kHALF", "BFloat16", "BF16", "FP8", "Int32", "Bool", "Int64", "kINT8"])]
    s = summarize_layers(json.dumps({"Layers": layers}))
    assert [r["out"] for r in s["layers"]] == ["FP16", "BF16", "BF16", "FP8", "INT32", "BOOL", "INT64", "INT8"]


def test_trt11_format_only_and_unknown_type():
    layers = [_layer("a", "X", [], [{"Format": "Channel major FP16 format where channel % 8 == 0"}]),
              _layer("b", "X", [], [{"DataType": "SomethingNew", "Format": "Row major linear format"}]),
              _layer("c", "X", [], [{"Name": "no type at all"}])]
    s = summarize_layers(json.dumps({"Layers": layers}))
    assert [r["out"] for r in s["layers"]] == ["FP16", "unknown", "unknown"]


def test_mixed_inputs_pick_the_lowest_precision():
    ins = [{"DataType": "Float"}, {"DataType": "Int8"}]
    s = summarize_layers(json.dumps({"Layers": [_layer("add", "ElementWise", ins, [{"DataType": "Half"}])]}))
    assert s["layers"][0]["in"] == "INT8" and s["layers"][0]["out"] == "FP16"
