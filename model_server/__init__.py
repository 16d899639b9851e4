"""The ModelWarden inference server. It may import ``modelwarden.artifacts`` and nothing else of the operator."""
