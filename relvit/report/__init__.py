"""Gather run directories into tidy tables and render the paper's tables."""
