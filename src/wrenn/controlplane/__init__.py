"""The control plane: REST API, users, teams, keys, hosts, scheduler and reconciler (`wrenn server`).

Stateless: every piece of state lives in the database. It reaches host agents only through the Connect
API in `wrenn.proto.hostagent`.
"""
