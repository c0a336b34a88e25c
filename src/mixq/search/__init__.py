"""Searches over bit configurations."""
