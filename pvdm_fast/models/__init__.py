"""Stage-1 autoencoder, the triplane UNet, discriminators and LPIPS."""
