"""Worked examples on real data that ships offline (scikit-learn's digits)."""
