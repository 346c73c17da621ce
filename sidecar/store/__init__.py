"""The store (Vault or OpenBao): the only layer that imports hvac."""
