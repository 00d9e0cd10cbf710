"""Dataset-level label operations that move many images at once (merges) and their undo."""
