"""The torch-free core: face geometry and image I/O, the ONNX models and their micro-batcher, face detection,
RecordIO, and the bulk augmentation / embedding steps. It imports neither `lrface.service` nor `lrface.training`."""
