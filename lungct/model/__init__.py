"""The network and what is done with it: building, training (one machine or several),
cross-validation, export, Grad-CAM (docs/development.md). Importing the package keeps
TensorFlow's start-up chatter out of the logs (:mod:`lungct.model.quiet`; every
TensorFlow import of the project comes after it).
"""

from lungct.model.quiet import quiet_tensorflow

quiet_tensorflow()
