"""tfree for torch (work in progress)."""
