"""tfree for tf (work in progress)."""
