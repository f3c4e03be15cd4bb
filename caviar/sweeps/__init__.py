"""`caviar.sweep`: one experiment, coarse-to-fine stages, narrowing between them, budget
planning, and what `caviar sweep` prints."""
