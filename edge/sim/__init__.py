"""Two-rooms differential-drive simulator (numpy + OpenCV, no torch)."""
