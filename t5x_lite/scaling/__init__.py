"""Scaling-law toolkit: counting, laws, fits, sweep planning and plots."""
