"""The supervisor (``atoll workload run``): container runs, the death stream,
sd_notify, health checks, the podman runtime and the control server."""
