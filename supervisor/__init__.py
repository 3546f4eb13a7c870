"""nsvisor: a container supervisor on Linux namespaces and cgroups."""

__version__ = "0.1.0"
