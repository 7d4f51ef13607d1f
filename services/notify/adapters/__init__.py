"""Adapters from the notify service to the outside world (vendor HTTP APIs)."""
