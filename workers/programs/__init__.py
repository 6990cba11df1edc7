"""Training programs the supervisor can run, one package each."""
