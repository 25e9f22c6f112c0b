"""tfree for jax (work in progress)."""
