"""Turning results into reports: tables, plots, aggregated statistics, docs/results.md."""
