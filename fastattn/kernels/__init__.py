"""fastattn.kernels (see DESIGN.md)."""
