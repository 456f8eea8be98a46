"""The network and what is done with it: building, training (one machine or several),
cross-validation, export, Grad-CAM.

Importing any module of this package that uses TensorFlow imports it quietly: TensorFlow's
C++ start-up chatter is kept out of the logs (here, before the first import of it).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
