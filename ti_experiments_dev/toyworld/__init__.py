"""The toy world's pretraining: its untrained networks, resumable stages, and the export into the package."""
