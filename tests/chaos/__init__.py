"""Chaos testing: clients that record everything, faults bounded in time, a history checker."""
