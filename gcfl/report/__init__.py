"""Comparison reports: per-round statistics, CSV, Markdown summary and plots."""
