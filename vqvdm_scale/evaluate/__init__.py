"""evaluate: FVD, KVD, IS, FVD_128, drift and reconstruction metrics under a recorded protocol."""
