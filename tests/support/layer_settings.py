"""Settings of nodes that also serve the test-only probe consumer (tests/support/layer_probe.py)."""

from chatsite.settings import *  # noqa: F403

ASGI_APPLICATION = "tests.support.layer_probe.application"
