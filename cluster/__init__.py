"""The cluster runtime: plain asyncio + redis-py, no Django.

Membership, the room registry (fenced leases), the supervisor, room servers, the durable room
log and the per-node fan-out. ``rooms/`` is the only package that knows both this and Django.
"""
