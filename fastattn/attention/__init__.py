"""fastattn.attention (see DESIGN.md)."""
