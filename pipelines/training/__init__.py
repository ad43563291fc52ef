"""`affectflow train`: video-level emotion models learned from a run's frame table and your labels."""
