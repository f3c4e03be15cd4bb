"""The Ray Tune layer, and the only package that imports Ray: the search space as Ray
distributions, schedulers, the Tuner, the trainable, driver callbacks, the seal on Ray's state,
reading what Ray wrote, joining a cluster, trackers."""
