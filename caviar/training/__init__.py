"""One trial without Ray: data on disk -> tensors, models, the training loop, `Trial` (build, advance,
checkpoint, restore), devices, babysitting probes and the sanity checks of `caviar check`."""
