"""Example function 1: decode and normalise an image, store it as chain state."""
