"""The network and what is done with it: building, training (one machine or several),
cross-validation, export, Grad-CAM (docs/development.md). Importing the package keeps
TensorFlow's C++ start-up chatter out of the logs (set before the first import of it).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
