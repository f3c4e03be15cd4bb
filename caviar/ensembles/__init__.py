"""`caviar.ensemble`: members gathered from an experiment folder, weights chosen on validation
(never test), evaluated on test; seed re-runs; export as one module."""
