"""The int8 study (issue 29): cheap students in ONNX Runtime, float32 against static int8, accuracy and latency."""
