"""CPU kernels (numba) for the twin network's first layers, behind one dispatch. No Optuna."""
