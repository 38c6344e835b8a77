"""Network definitions (torch, imported lazily) and the shipped ONNX weights; `lrface.models.face` is torch-free."""
