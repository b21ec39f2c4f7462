"""Files and tf.data: fetching data sets, reading their layout and images, feeding them to a model.

Nothing in this package knows about models; TensorFlow is imported only by ``pipeline`` and ``augment``.
"""
