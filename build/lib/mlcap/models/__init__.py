"""Models: image and caption encoders, the fusion network and its LightningModule."""
