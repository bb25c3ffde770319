"""Stage 2, teacher runners: resolving a teacher's files and identity, running it (torch or onnxruntime), and `build`."""
