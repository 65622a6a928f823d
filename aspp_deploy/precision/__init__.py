"""Reduced precision: FP16 mixed-precision ONNX and INT8 Q/DQ ONNX (for TensorRT or for the
ONNX Runtime CPU provider), calibrated on images through the manifest's preprocessing, with a
calibration cache and an accuracy budget. Entry point: ``quantize.quantized_onnx_from_fp32``.

Nothing heavy is imported here: ONNX Runtime's quantizer and ModelOpt load when used.
"""
