"""``modelwarden.io/v1alpha1``: pydantic models that are the single source of truth for the CRDs."""
