"""Stage 4, distillation from the cache: experts, strategies, the loss, students, the training loop, runs and sweeps."""
