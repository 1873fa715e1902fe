"""Processes: supervision, the watchdog, the worker, executors, the runner, resume, envs."""
