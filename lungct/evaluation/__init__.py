"""Scoring a trained model on the test split: metrics, the report, charts and the model card."""
