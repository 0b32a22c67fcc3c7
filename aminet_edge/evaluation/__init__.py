"""Metrics, heatmap overlays and bundle evaluation."""
