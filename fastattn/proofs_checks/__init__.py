"""fastattn.proofs_checks (see DESIGN.md)."""
