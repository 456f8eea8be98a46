"""Answering with a trained model: inference, the REST service, prediction formats and DICOM Structured Reports."""
