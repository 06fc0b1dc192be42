"""Snapshots: bootable system trees, numbered, one of them active."""
