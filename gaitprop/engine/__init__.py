"""The training engine: the step runner (queued steps, CUDA graphs, packs), the training loop and
what a run measures. Imports the model and the arrays."""
