"""The nsvisor daemon: one trio event loop supervising every container."""
