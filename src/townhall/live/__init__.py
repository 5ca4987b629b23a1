"""The running side of a live space: the stage (speakers, mixer) and the program (encoder, packager, origin window, recorder)."""
