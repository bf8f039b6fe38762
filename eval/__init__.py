"""patchlab.eval: judge (tSuc, transfer matrices, physical bins, confidence intervals, reports)."""
