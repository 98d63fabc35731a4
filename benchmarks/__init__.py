"""Overhead benchmark of lightning-viz against what users run today (``make bench``; see RESULTS.md)."""
