"""The scikit-learn training pipeline that produces verified artifact directories."""
