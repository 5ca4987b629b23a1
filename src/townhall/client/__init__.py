"""Clients of a townhall server: the `townhall speak` bot."""
