"""secrets-sidecar: serve an application's secrets on localhost, cached by intent."""

__version__ = "0.1.0"
