"""Durable records: the control-plane database and the recordings on disk."""
