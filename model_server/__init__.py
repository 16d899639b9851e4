"""The ModelWarden inference server. It may import ``modelwarden.artifacts`` and nothing else of the operator.

Run it with ``python -m model_server`` (configuration from environment variables: ``--help-env`` lists
them). ``model_server.app.ModelServer`` is the ASGI application.
"""

__version__ = "0.1.0"
