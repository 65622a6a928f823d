"""Serving on NVIDIA Triton Inference Server: the model repository (``repository``), the segmentation
service model (``triton_model``, a Python-backend model), the server process (``server``), the protobuf-text configs (``triton_config``) and the load
test (``loadtest``). Behind ``aspp-deploy triton``, ``triton-env``, ``serve`` and ``loadtest``."""
