"""The extraction stage: backbones, pooling, image decoding, entry keys, the extraction runner and its torchrun launcher."""
