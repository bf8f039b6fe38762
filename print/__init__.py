"""patchlab.print: turn a patch into paper (exact-size PDFs, cut marks, fiducials, charts)."""
