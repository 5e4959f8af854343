"""Sequential models added by recbole-denoise: one module per model (file name = lower-case class name)."""
