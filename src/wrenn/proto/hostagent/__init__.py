"""The host agent API, by version."""
