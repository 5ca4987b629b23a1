"""Live captions and transcripts: a speech recognizer behind a small
interface (engine.py), run in a worker process fed the program audio
(worker.py), and the pure rendering of captions into WebVTT, a subtitles
playlist, captions.json and transcripts (track.py)."""
