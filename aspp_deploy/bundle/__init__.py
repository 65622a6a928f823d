"""Jetson deployment bundles: the ONNX files, a torch-free runtime, a device build step, DeepStream and
Triton configs and a README, generated from the model manifest (``bundle.bundle_from_onnx``).

Generation may import onnx; what the bundle ships (``aspp_deploy.runtime`` and the modules it needs)
does not.
"""
