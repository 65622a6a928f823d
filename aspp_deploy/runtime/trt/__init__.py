"""TensorRT: build plans per version, engine building, calibration, a CUDA layer and the runner.

Nothing here imports tensorrt, cuda-python or pycuda at import time: ``plan`` is pure Python and
the other modules import those packages inside the functions that need them.
"""
