"""Reusable widgets and modal screens."""
