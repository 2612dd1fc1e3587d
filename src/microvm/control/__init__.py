"""Talking to running hypervisors: graceful shutdown, balloon, process waits."""
