"""Network definitions (torch, imported lazily) and the shipped ONNX weights; `lrface.core.face` is torch-free."""
