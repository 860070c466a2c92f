"""Capture: a line's packets copied to root on its node (`yogurt capture`)."""
