"""The thesis's synthetic workflow function: read the input state, compute for a while, write state of a size."""
