"""Network definitions (torch, imported lazily) and the shipped ONNX weights; `models.face` is torch-free."""
