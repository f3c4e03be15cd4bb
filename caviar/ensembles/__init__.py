"""`caviar.ensemble`: members gathered from an experiment folder, weights chosen on validation
(never test), evaluated on test; export as one module. The seed re-runs it asks for are a Ray Tune
experiment, so they are trained by caviar.search.reruns."""
