"""The listener plane, in the data's order: the live window (``window``), the
playlists it renders (``playlist``), ONE pure rules function from a request to
an answer (``rules``), fan-out to many listeners, and thin drivers of the rules
(``asgi`` for the app path, our own HTTP/1.1 on httptools for the hot path)."""
