"""Plugins, one module per concern, registered in yip's fixed order (see registry.py)."""
