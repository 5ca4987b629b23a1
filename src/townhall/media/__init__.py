"""Audio frames, mixing, encoding, packaging and playlists. Pure: no sockets, no event loop."""
