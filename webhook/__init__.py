"""Mutating admission webhook that injects registry-specific imagePullSecrets into Flyte pods."""

__version__ = "0.1.0"

# The name every write to the apiserver is recorded under in managedFields (Secrets, caBundle, Lease).
FIELD_MANAGER = "pullsecrets-webhook"
