"""Models: the architecture registry (`registry`, torch-free) and the built-in architectures (`archs`)."""
