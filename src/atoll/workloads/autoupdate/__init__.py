"""Workload auto-update: checks against registries and local images, the
update state, the units' update labels, version choice and rollouts."""
