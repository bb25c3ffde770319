"""After training: ONNX export, predictions side by side, and ensembles of students."""
