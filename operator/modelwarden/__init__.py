"""ModelWarden: governed ML model rollouts on Kubernetes."""

__version__ = "0.1.0"
