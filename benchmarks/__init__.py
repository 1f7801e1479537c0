"""Reproducible experiments: each script prints numbers and writes JSON/CSV and PNG figures."""
