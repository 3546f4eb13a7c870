"""Starting containers: the zygote, the per-container monitor (PID 1) and the
workload's namespace, mount and privilege set-up."""
