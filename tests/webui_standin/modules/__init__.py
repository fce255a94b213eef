"""A stand-in for the AUTOMATIC1111 webui's `modules` package: it records what the extension
registers, so the extension can be tested without a webui."""
