"""The fan-out benchmark: this project against the Django Channels tutorial chat and a Socket.IO
chat, driven by one load generator on the same machine (see docs/benchmarks.md)."""
