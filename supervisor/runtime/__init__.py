"""Starting containers: the zygote, the per-container monitor (PID 1) and the
workload's namespace, mount and privilege set-up.

Public surface (import from the submodules; this package imports nothing so
that the pure `caps` and `spec` stay cheap to import):

- spec.LaunchSpec / Mount / Namespaces: what to start (JSON round-trip).
- zygote.Zygote.spawn() (before trio.run), await Zygote.launch(spec) ->
  Launched(pid, pidfd, workload_pid, started_at), Zygote.close();
  zygote.launch_sync(spec) for tests and benchmarks; zygote.LaunchError.
- monitor: the exit file and json-file log formats (see docs/DESIGN.md).
- rootfs.build_busybox_rootfs(dest).
- linux: the ctypes seam to the kernel; workload: the set-up plan.
"""
