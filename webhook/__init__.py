"""Mutating admission webhook that injects registry-specific imagePullSecrets into Flyte pods."""

__version__ = "0.1.0"
