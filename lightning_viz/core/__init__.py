"""Shared machinery: schedule and emission (base), statistics, hooks, rank logic, sinks, writer."""
