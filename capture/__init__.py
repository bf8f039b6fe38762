"""patchlab.capture: watch the world (webcam / video / image-sequence loop, per-frame scoring)."""
