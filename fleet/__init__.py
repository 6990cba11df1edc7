"""The GPU fleet: workers and their devices, reservations, quotas and the scheduler that admits
queued runs onto them (docs/architecture.md, "Fleet")."""
