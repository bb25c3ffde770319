"""Stage 1, the dataset: loading a task's splits, tokenizing them into token-budget batches, and augmented transfer splits."""
