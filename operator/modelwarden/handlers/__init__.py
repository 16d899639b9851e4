"""Thin kopf layer: observe, ``engine.decide``, apply actions, write status once."""
