"""A procedural captioned-image world and a small text-to-image model trained on it."""
