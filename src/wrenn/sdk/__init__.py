"""The Python SDK (`from wrenn import Capsule`). Imports nothing of the server side."""
