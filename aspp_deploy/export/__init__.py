"""PyTorch -> ONNX: export, check, simplify, ASPP-aware passes, parity, manifest."""
