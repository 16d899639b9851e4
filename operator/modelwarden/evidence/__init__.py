"""The evidence bundle of one model version: one ``.tar.gz`` a regulator can check offline (DESIGN §7).

:mod:`.bundle` writes and verifies it from what the caller read (no kubernetes here: the CLI reads the
cluster, see ``modelwarden.cli.evidence``).
"""
