"""The fleet agent: the part of the fleet that runs on a device.

It imports only what a device image carries (the standard library; httpx and
cryptography lazily, when a command needs them), and it shares its wire format
(:mod:`atoll.agent.wire`) with the server in :mod:`atoll.fleet`.
"""
