"""Video datasets, video I/O and the latent cache."""
