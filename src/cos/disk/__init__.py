"""Disks: partition planning, GPT, filesystems built as files."""
