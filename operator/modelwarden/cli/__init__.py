"""The ``modelwarden`` command line (also ``kubectl modelwarden``)."""
