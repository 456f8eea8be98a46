"""Reading inputs: DICOM, exported images, CT windowing, archives, data sources, and the one path from a raw file to the model's input."""
