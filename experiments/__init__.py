"""The experiment-tracking service around MLflow: tracking, compare, promote, serving."""
