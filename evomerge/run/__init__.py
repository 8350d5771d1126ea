"""A run from start to results, the same for every experiment kind.

`lifecycle.RunLifecycle` owns what every kind shares: the run directory, its lock, the stored config (and the diff
refused or accepted with --force), resume, the event log's sessions, the optimizer snapshot check, and the one
`results.json`. `evomerge.runner.kind_class` gives the class that runs an experiment's `kind:`.
"""
