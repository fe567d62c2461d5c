"""Example robodual generalist plugin: the ``bow_mlp`` family (an MLP over a downsampled frame and a hashed
bag-of-words instruction embedding, emitting action chunks and task/action latents)."""
