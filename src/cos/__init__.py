"""cos: make OCI container images bootable and keep the machines running them up to date."""

__version__ = "0.1.0"
