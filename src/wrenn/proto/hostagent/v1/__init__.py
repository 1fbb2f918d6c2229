"""The host agent API, version 1 (`hostagent.v1.HostAgentService`); see docs/agent-api.md."""
