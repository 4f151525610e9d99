"""fastattn.lowrank (see DESIGN.md)."""
