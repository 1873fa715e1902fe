"""Registries: the plugin loader, the backends, the tasks (and their data sets), backend labels."""
