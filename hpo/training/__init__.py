"""MNIST pairs, the twin network and its batched training. Knows nothing of Optuna."""
