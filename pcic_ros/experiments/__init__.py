"""Experiment tooling: KITTI loaders, training data and ``pcic train``, evaluation against classic
anchors and metrics, the studies, the demo and the lossy-scan study."""
