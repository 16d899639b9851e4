"""Artifact manifest, SHA256 verification, feature contract and report formats (shared with the server)."""
