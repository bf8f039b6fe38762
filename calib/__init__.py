"""patchlab.calib: measure the world (camera intrinsics, printer-to-camera colour, palette)."""
