"""scenecls: classify scenes by transfer learning from ImageNet CNNs.

Importing this package must stay cheap: nothing here may import TensorFlow.
"""

__version__ = "0.1.0"
