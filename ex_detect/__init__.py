"""Example function 2: run a real OpenCV detector on the preprocessed image."""
