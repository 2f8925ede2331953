"""hpo: automatic, shared hyperparameter search for twin CNNs on MNIST digit pairs."""

__version__ = "0.2.0"
