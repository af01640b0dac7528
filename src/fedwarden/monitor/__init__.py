"""Monitoring: alert rules over rounds, Prometheus metrics, and the web dashboard."""
